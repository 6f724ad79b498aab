"""The exporter-toolkit web config file (`--web.config.file`), as every official Prometheus exporter reads it.

    tls_server_config:            # optional; when present the endpoint speaks only HTTPS
      cert_file: server.crt       # relative paths are resolved against the config file's directory
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert
      client_ca_file: ca.crt
      min_version: TLS12          # TLS10..TLS13, default TLS12
    http_server_config:
      headers: {X-Frame-Options: deny}
    basic_auth_users:
      prometheus: $2b$12$...      # bcrypt hash (htpasswd -nBC 12 "" | tr -d ':\\n')

Every problem is a CgagentError whose text is one line naming the file, the field and the fix. The TLS
context is built while loading, so a bad certificate fails at start, not on the first scrape.
"""

from __future__ import annotations

import os
import re
import ssl
import stat
import sys
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from cgagent.errors import CgagentError
from cgagent.regular import NotRegular, open_regular

# "" means NoClientCert, as in exporter-toolkit
ClientAuthType = Literal["NoClientCert", "RequestClientCert", "RequireAnyClientCert",
                         "VerifyClientCertIfGiven", "RequireAndVerifyClientCert", ""]
TLSVersionName = Literal["TLS10", "TLS11", "TLS12", "TLS13"]

TLS_VERSIONS: dict[str, ssl.TLSVersion] = {
    "TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3,
}

# Go (IANA) cipher suite names as exporter-toolkit accepts them -> OpenSSL names for SSLContext.set_ciphers.
# Only TLS 1.2 suites are configurable, as in Go.
GO_CIPHER_SUITES: dict[str, str] = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
}

# exporter-toolkit lets only these response headers be set (and some only to fixed values): the others are
# the server's own (Content-Type, WWW-Authenticate, ...) and overriding them would break scrapes or auth.
ALLOWED_HEADERS: dict[str, tuple[str, ...] | None] = {
    "Strict-Transport-Security": None,
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": None,
    "Content-Security-Policy": None,
}

# Keys exporter-toolkit knows that we do not implement: say so instead of "unknown key".
UNSUPPORTED_KEYS = {
    "cert": "put the PEM into a file and use cert_file",
    "key": "put the PEM into a file and use key_file",
    "client_ca": "put the PEM into a file and use client_ca_file",
    "curve_preferences": "remove it; OpenSSL's default curve list is used",
}

BCRYPT_HASH = re.compile(r"^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")
# Each step doubles the time of a check: 12 takes ~0.25 s on one core, 14 ~1 s. Above that, a handful of
# wrong guesses (which anyone can send) keeps a core busy for many seconds, and a scraper whose check is
# not cached yet waits longer than the server lets it (exporters.web.AUTH_WAIT).
MAX_BCRYPT_COST = 14

NEEDS_CA = {"VerifyClientCertIfGiven", "RequireAndVerifyClientCert"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TLSServerConfig(_Strict):
    cert_file: str = ""
    key_file: str = ""
    client_auth_type: ClientAuthType = "NoClientCert"
    client_ca_file: str = ""
    client_allowed_sans: list[str] = Field(default_factory=list)
    min_version: TLSVersionName = "TLS12"
    max_version: TLSVersionName = "TLS13"
    cipher_suites: list[str] = Field(default_factory=list)
    prefer_server_cipher_suites: bool = True


class HTTPServerConfig(_Strict):
    headers: dict[str, str] = Field(default_factory=dict)
    http2: bool = True   # accepted for compatibility; this server speaks HTTP/1.1 only


class WebConfig(_Strict):
    tls_server_config: TLSServerConfig | None = None
    http_server_config: HTTPServerConfig = Field(default_factory=HTTPServerConfig)
    basic_auth_users: dict[str, str] = Field(default_factory=dict)

    _source: str = PrivateAttr(default="<web config>")
    _ssl_context: ssl.SSLContext | None = PrivateAttr(default=None)

    @property
    def source(self) -> str:
        return self._source

    @property
    def tls_enabled(self) -> bool:
        return self.tls_server_config is not None

    @property
    def auth_enabled(self) -> bool:
        return bool(self.basic_auth_users)

    @property
    def client_allowed_sans(self) -> list[str]:
        return list(self.tls_server_config.client_allowed_sans) if self.tls_server_config else []

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server-side TLS context (built and checked at load), or None for plain HTTP."""
        return self._ssl_context

    def response_headers(self) -> dict[str, str]:
        return dict(self.http_server_config.headers)


def _err(source: str, field: str, problem: str, fix: str) -> CgagentError:
    # one line whatever the OS or library put in its message
    text = " ".join(f"{source}: {field}: {problem}".split())
    return CgagentError(text, " ".join(fix.split()))


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _from_validation_error(source: str, e: ValidationError, data: Any) -> CgagentError:
    first = e.errors()[0]
    loc = tuple(first["loc"])
    field = _loc(loc)
    kind = first["type"]
    last = loc[-1] if loc else ""
    if kind == "extra_forbidden":
        if last in UNSUPPORTED_KEYS:
            return _err(source, field, "not supported by cgagent", UNSUPPORTED_KEYS[str(last)])
        sections: dict[object, type[BaseModel]] = {"tls_server_config": TLSServerConfig,
                                                   "http_server_config": HTTPServerConfig}
        parent = sections.get(loc[0], WebConfig) if len(loc) > 1 else WebConfig
        allowed = ", ".join(k for k in parent.model_fields if k not in UNSUPPORTED_KEYS)
        return _err(source, field, "unknown key", f"remove it or fix its spelling (allowed here: {allowed})")
    if kind in ("literal_error", "enum"):
        expected = first.get("ctx", {}).get("expected", "")
        return _err(source, field, f"invalid value {first.get('input')!r}", f"use one of {expected}")
    if kind == "dict_type" or kind == "model_type":
        return _err(source, field, "must be a mapping of keys to values", "write it as `key: value` lines")
    return _err(source, field, first["msg"], "fix the value (see the exporter-toolkit web config format)")


def _resolve(base: str, p: str) -> str:
    return p if os.path.isabs(p) else os.path.join(base, p)


# certificate chains and CA bundles are kilobytes; the system CA bundle is ~200 KiB
MAX_PEM_BYTES = 4 << 20


def _read_pem(source: str, field: str, path: str, marker: str, what: str) -> None:
    """Check the file is a regular file of bounded size holding a PEM `marker` block, before OpenSSL (which
    would read a FIFO or /dev/zero without end) is given it."""
    key = field.rsplit(".", 1)[-1]
    try:
        with open(open_regular(path), "rb", buffering=0) as f:
            data = f.read(MAX_PEM_BYTES + 1)
    except NotRegular:
        raise _err(source, field, f"{path!r} is not a regular file", f"point {key} at a PEM {what} file") from None
    except OSError as e:
        raise _err(source, field, f"cannot read {path!r} ({e.strerror})",
                   f"point {key} at a readable PEM {what}") from None
    if len(data) > MAX_PEM_BYTES:
        raise _err(source, field, f"{path!r} is larger than {MAX_PEM_BYTES >> 20} MiB",
                   f"point {key} at a PEM {what} file")
    if marker.encode() not in data:
        raise _err(source, field, f"{path!r} holds no PEM {what}",
                   f"point {key} at a PEM file containing '-----BEGIN {marker}'")


def _warn_if_exposed(source: str, field: str, path: str) -> None:
    """A private key others can read is as good as published; say so (exporter-toolkit does not, and
    refusing would break setups that work today)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        who = " and ".join(w for w, bits in (("its group", stat.S_IRWXG), ("other users", stat.S_IRWXO))
                           if mode & bits)
        print(f"cgagent: warning: {source}: {field}: {path} is accessible by {who} "
              f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}", file=sys.stderr, flush=True)


def _no_password() -> bytes:
    # An encrypted key would make OpenSSL prompt on the terminal; refuse instead.
    raise ValueError("encrypted private key")


def build_ssl_context(tls: TLSServerConfig, source: str, base_dir: str) -> ssl.SSLContext:
    f = "tls_server_config"
    if not tls.cert_file or not tls.key_file:
        missing = "cert_file" if not tls.cert_file else "key_file"
        raise _err(source, f"{f}.{missing}", "required when tls_server_config is present",
                   "set both cert_file and key_file, or remove tls_server_config to serve plain HTTP")
    cert = _resolve(base_dir, tls.cert_file)
    key = _resolve(base_dir, tls.key_file)
    _read_pem(source, f"{f}.cert_file", cert, "CERTIFICATE", "certificate")
    _read_pem(source, f"{f}.key_file", key, "PRIVATE KEY", "private key")
    _warn_if_exposed(source, f"{f}.key_file", key)

    auth = tls.client_auth_type or "NoClientCert"
    if auth == "RequireAnyClientCert":
        raise _err(source, f"{f}.client_auth_type", "RequireAnyClientCert is not supported (Python's TLS "
                   "stack cannot require a client certificate without verifying it)",
                   "use RequireAndVerifyClientCert with client_ca_file")
    if auth in NEEDS_CA and not tls.client_ca_file:
        raise _err(source, f"{f}.client_ca_file", f"required by client_auth_type {auth}",
                   "set client_ca_file to the PEM file of the CA that signs client certificates")
    if tls.client_ca_file and auth in ("NoClientCert", "RequestClientCert"):
        raise _err(source, f"{f}.client_auth_type", f"client_ca_file is set but client_auth_type is {auth}",
                   "set client_auth_type to RequireAndVerifyClientCert (or VerifyClientCertIfGiven), "
                   "or remove client_ca_file")
    if tls.client_allowed_sans and auth != "RequireAndVerifyClientCert":
        raise _err(source, f"{f}.client_allowed_sans", "needs verified client certificates",
                   "set client_auth_type to RequireAndVerifyClientCert")
    if TLS_VERSIONS[tls.min_version] > TLS_VERSIONS[tls.max_version]:
        raise _err(source, f"{f}.min_version", f"{tls.min_version} is above max_version {tls.max_version}",
                   "lower min_version or raise max_version")

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.minimum_version = TLS_VERSIONS[tls.min_version]
        ctx.maximum_version = TLS_VERSIONS[tls.max_version]
    except (ValueError, ssl.SSLError) as e:
        raise _err(source, f"{f}.min_version", f"not supported by this OpenSSL ({e})",
                   "use TLS12 or TLS13") from None
    try:
        ctx.load_cert_chain(cert, key, password=_no_password)
    except ValueError:
        raise _err(source, f"{f}.key_file", f"{key!r} is encrypted",
                   "use an unencrypted key (openssl pkey -in KEY -out KEY.plain)") from None
    except ssl.SSLError as e:
        if "KEY_VALUES_MISMATCH" in str(e) or "key values mismatch" in str(e):
            raise _err(source, f"{f}.key_file", f"{key!r} does not match the certificate in {cert!r}",
                       "use the private key the certificate was issued for") from None
        raise _err(source, f"{f}.cert_file", f"cannot load {cert!r} with {key!r} ({e.reason or e})",
                   "check both are valid PEM files "
                   "(openssl x509 -in CERT -noout; openssl pkey -in KEY -noout)") from None
    if tls.cipher_suites:
        names = []
        for s in tls.cipher_suites:
            if s not in GO_CIPHER_SUITES:
                raise _err(source, f"{f}.cipher_suites", f"unknown or non-configurable cipher suite {s!r}",
                           "use Go/IANA TLS 1.2 names such as TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 "
                           "(TLS 1.3 suites are not configurable)")
            names.append(GO_CIPHER_SUITES[s])
        try:
            ctx.set_ciphers(":".join(names))
        except ssl.SSLError:
            raise _err(source, f"{f}.cipher_suites", "none of the listed suites is available in this OpenSSL",
                       "list current suites such as TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256") from None
    if tls.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    if tls.client_ca_file:
        ca = _resolve(base_dir, tls.client_ca_file)
        _read_pem(source, f"{f}.client_ca_file", ca, "CERTIFICATE", "CA certificate")
        try:
            ctx.load_verify_locations(cafile=ca)
        except ssl.SSLError as e:
            raise _err(source, f"{f}.client_ca_file", f"cannot load {ca!r} ({e.reason or e})",
                       "point client_ca_file at a PEM CA certificate") from None
    # RequestClientCert never verifies and we never look at an unverified certificate, so not asking is
    # equivalent for authorization.
    ctx.verify_mode = {"NoClientCert": ssl.CERT_NONE, "RequestClientCert": ssl.CERT_NONE,
                       "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
                       "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}[auth]
    return ctx


HASH_HOWTO = ("python3 -c 'import bcrypt,getpass; "
              "print(bcrypt.hashpw(getpass.getpass().encode(), bcrypt.gensalt(12)).decode())'")


def _bcrypt_ok(password: bytes, hashed: str) -> bool:
    import bcrypt

    try:
        return bool(bcrypt.checkpw(password, hashed.encode()))
    except ValueError:
        return False


def _check_users(cfg: WebConfig, source: str) -> None:
    for user, h in cfg.basic_auth_users.items():
        field = f"basic_auth_users.{user}"
        if not user or ":" in user:
            raise _err(source, field, "user names must be non-empty and contain no ':'", "rename the user")
        if not BCRYPT_HASH.match(h):
            raise _err(source, field, "is not a bcrypt hash", f"store a bcrypt hash, e.g. from: {HASH_HOWTO}")
        cost = int(h[4:6])
        if cost > MAX_BCRYPT_COST:
            raise _err(source, field, f"bcrypt cost {cost} is above {MAX_BCRYPT_COST} (each check would take "
                       f"~{2 ** (cost - 14):g} s of CPU, and anyone can ask for checks)",
                       f"hash the password again with a cost from 10 to {MAX_BCRYPT_COST}: {HASH_HOWTO}")
        if _bcrypt_ok(b"", h):
            raise _err(source, field, "the password is empty", f"set a password and store its hash: {HASH_HOWTO}")


def _check_headers(cfg: WebConfig, source: str) -> None:
    canon = {k.lower(): k for k in ALLOWED_HEADERS}
    for name, value in cfg.http_server_config.headers.items():
        field = f"http_server_config.headers.{name}"
        key = canon.get(name.lower())
        if key is None:
            raise _err(source, field, "this header cannot be configured",
                       f"use one of {', '.join(ALLOWED_HEADERS)}")
        allowed = ALLOWED_HEADERS[key]
        if "\r" in value or "\n" in value:
            raise _err(source, field, "value contains a line break", "write the value on one line")
        if allowed is not None and value.lower() not in allowed:
            raise _err(source, field, f"invalid value {value!r}", f"use one of {', '.join(allowed)}")


def web_config_from_dict(data: Any, source: str = "<web config>", base_dir: str = ".") -> WebConfig:
    """Validate a parsed config and build its TLS context. `base_dir` resolves relative file paths."""
    if data is None:
        data = {}   # an empty file is valid: plain HTTP, no auth (as exporter-toolkit)
    if not isinstance(data, dict):
        raise _err(source, "(top level)", "must be a mapping",
                   "start with tls_server_config:, http_server_config: or basic_auth_users:")
    try:
        cfg = WebConfig.model_validate(data)
    except ValidationError as e:
        raise _from_validation_error(source, e, data) from None
    cfg._source = source
    _check_users(cfg, source)
    _check_headers(cfg, source)
    if cfg.tls_server_config is not None:
        cfg._ssl_context = build_ssl_context(cfg.tls_server_config, source, base_dir)
    return cfg


def load_web_config(path: str) -> WebConfig:
    """Read and check a --web.config.file; raises CgagentError (one line) on any problem."""
    import yaml

    from cgagent import yamlbound

    try:
        text = yamlbound.read_text(path)
    except OSError as e:
        raise _err(path, "--web.config.file", f"cannot read the file ({e.strerror})",
                   "pass the path of an existing, readable YAML file") from None
    except UnicodeDecodeError:
        raise _err(path, "--web.config.file", "is not UTF-8 text", "save the file as UTF-8 YAML") from None
    except ValueError as e:
        raise _err(path, "--web.config.file", f"is {e}", "point it at the web config file") from None
    try:
        _root, data = yamlbound.compose(text)
    except yamlbound.YAMLBoundError as e:
        raise _err(path, f"line {e.line}", f"refused: {e.problem}", "write the values out") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}" if mark is not None else "YAML"
        what = getattr(e, "problem", None) or str(e)
        raise _err(path, where, f"YAML syntax error: {what}",
                   "fix the YAML syntax at that position") from None
    return web_config_from_dict(data, source=path, base_dir=os.path.dirname(os.path.abspath(path)))
