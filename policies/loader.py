"""Policy files: YAML -> validated Policy, with every problem reported as `file:line: field: reason`.

The YAML is composed once into a node tree (which keeps each node's line) and constructed from it;
pydantic's error locations are then walked down that tree to the line of the offending key, so a
user sees all the errors of a file at once, each pointing at its line.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from cgagent import yamlbound
from cgagent.errors import CgagentError
from policies.model import FieldError, Policy

BUILTIN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "builtin")
SYSTEM_DIR = "/etc/cgagent/policies.d"
SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a policy file, where it is and why."""

    file: str
    line: int
    field: str          # dotted path (throttling.ceiling); "(yaml)" for syntax, "(policy)" for the document
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.reason}"


class PolicyFileError(CgagentError):
    """One or more policy files are invalid; `problems` holds every error found."""

    def __init__(self, problems: list[Problem]) -> None:
        files = sorted({p.file for p in problems})
        n = len(problems)
        super().__init__(f"{n} problem{'s' * (n != 1)} in policy file{'s' * (len(files) != 1)} {', '.join(files)}",
                         "fix each one listed above; nothing was applied")
        self.problems = problems
        self.details = [str(p) for p in problems]   # printed one per line by cgagent.cli.errors.report


@dataclass
class Loaded:
    """One policy file as read: the policy, or the problems that stopped it."""

    path: str
    policy: Policy | None = None
    problems: list[Problem] = field(default_factory=list)
    raw_name: str | None = None     # the `name` the file gives, even when it is invalid

    @property
    def ok(self) -> bool:
        return self.policy is not None and not self.problems

    @property
    def builtin(self) -> bool:
        return os.path.dirname(self.path) == BUILTIN_DIR

    @property
    def key(self) -> str:
        """The name this file defines (for overriding), falling back to its file name."""
        if self.raw_name:
            return self.raw_name
        stem = os.path.basename(self.path)
        for s in SUFFIXES:
            stem = stem.removesuffix(s)
        return stem


# --- YAML with lines

def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _duplicates(node: yaml.Node, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], int, str]]:
    """Keys given twice in one mapping: PyYAML keeps the last silently, which hides typos."""
    out: list[tuple[tuple[str, ...], int, str]] = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for k, v in node.value:
            key = str(k.value)
            if key in seen:
                out.append(((*path, key), _line(k), f"given twice (first on line {seen[key]})"))
            else:
                seen[key] = _line(k)
            out.extend(_duplicates(v, (*path, key)))
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out.extend(_duplicates(v, (*path, str(i))))
    return out


def locate(root: yaml.Node | None, loc: Iterable[str | int]) -> tuple[int, tuple[str, ...]]:
    """Walk a pydantic location down the node tree -> (line, the path that exists in the file).

    Elements that are not keys of the YAML (pydantic's union tags, a missing field) stop the walk:
    the line is then that of the deepest node found (e.g. the mapping missing a required key).
    """
    if root is None:
        return 1, tuple(str(x) for x in loc)
    node, line = root, _line(root)
    path: list[str] = []
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if str(k.value) == str(part)), None)
            if match is None:
                path.append(str(part))
                continue  # a missing key: keep the parent's line
            k, node = match
            line = _line(k)
            path.append(str(part))
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = _line(node)
            path.append(str(part))
        elif isinstance(part, str) and not part.isidentifier():
            continue   # pydantic's tag for a union member / validator: not a key
        else:
            path.append(str(part))
    return line, tuple(path)


# --- pydantic errors -> problems

def _allowed_keys(path: tuple[str, ...]) -> list[str] | None:
    model: type[BaseModel] | None = Policy
    for part in path:
        if model is None:
            return None
        fld = next((f for n, f in model.model_fields.items() if (f.alias or n) == part), None)
        if fld is None:
            return None
        model = _model_of(fld.annotation)
    if model is None:
        return None
    return [f.alias or n for n, f in model.model_fields.items()]


def _model_of(annotation: Any) -> type[BaseModel] | None:
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        m = _model_of(arg)
        if m is not None:
            return m
    return None


def _reason(err: Any, path: tuple[str, ...]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(path[:-1])
        return "unknown key" + (f" (allowed: {', '.join(allowed)})" if allowed else "")
    if kind == "missing":
        return "required field is missing"
    msg = str(err["msg"]).removeprefix("Value error, ")
    if kind == "literal_error":
        return f"{err.get('input')!r} is not allowed: {msg.removeprefix('Input should be ')}"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"expected a mapping of keys, got {type(err.get('input')).__name__}"
    return msg


def _problems_from(e: ValidationError, root: yaml.Node | None, file: str) -> list[Problem]:
    out: list[Problem] = []
    for err in e.errors():
        loc: tuple[Any, ...] = tuple(err["loc"])
        ctx_error = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_error, FieldError):
            loc = ctx_error.loc
        line, path = locate(root, loc)
        out.append(Problem(file, line, ".".join(path) or "(policy)", _reason(err, path)))
    return out


# --- files

def parse_text(text: str, file: str) -> Loaded:
    """Validate one policy document. Never raises for a bad document: problems are in the result."""
    res = Loaded(file)
    try:
        root, data = yamlbound.compose(text)
    except yamlbound.YAMLBoundError as e:
        res.problems.append(Problem(file, e.line, "(yaml)", f"refused: {e.problem}; write the values out"))
        return res
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else 1
        reason = " ".join(x for x in (e.context, e.problem) if x) or "invalid YAML"
        res.problems.append(Problem(file, line, "(yaml)", f"YAML syntax: {reason}"))
        return res
    except yaml.YAMLError as e:
        res.problems.append(Problem(file, 1, "(yaml)", f"YAML: {e}"))
        return res
    if isinstance(data, dict) and isinstance(data.get("name"), str):
        res.raw_name = data["name"]
    if data is None:
        res.problems.append(Problem(file, 1, "(policy)", "the file is empty: a policy needs at least a name"))
        return res
    if root is not None:
        for path, line, why in _duplicates(root):
            res.problems.append(Problem(file, line, ".".join(path), why))
    try:
        policy = Policy.model_validate(data)
    except ValidationError as e:
        res.problems.extend(_problems_from(e, root, file))
        res.problems.sort(key=lambda p: p.line)
        return res
    if not res.problems:
        res.policy = policy
    return res


def load_file(path: str) -> Loaded:
    try:
        text = yamlbound.read_text(path)
    except UnicodeDecodeError as e:
        return Loaded(path, problems=[Problem(path, 1, "(file)", f"not UTF-8 text: {e.reason}")])
    except OSError as e:
        return Loaded(path, problems=[Problem(path, 0, "(file)", e.strerror or str(e))])
    except ValueError as e:
        return Loaded(path, problems=[Problem(path, 0, "(file)", f"refused: {e}")])
    return parse_text(text, path)


def search_path(extra: Iterable[str] | None = None) -> list[str]:
    """Built-ins, then /etc/cgagent/policies.d, then each --policy-dir: later ones win by name."""
    return [BUILTIN_DIR, SYSTEM_DIR, *(extra or [])]


def files_in(dirs: Iterable[str]) -> list[str]:
    out: list[str] = []
    for d in dirs:
        try:
            names = sorted(os.listdir(d))
        except FileNotFoundError:
            continue
        except NotADirectoryError:
            raise CgagentError(f"--policy-dir {d} is not a directory", "give a directory of *.yaml files") from None
        out.extend(os.path.join(d, n) for n in names if n.endswith(SUFFIXES) and not n.startswith("."))
    return out


def check_dirs(extra: Iterable[str] | None) -> list[str]:
    dirs = list(extra or [])
    for d in dirs:
        if not os.path.isdir(d):
            raise CgagentError(f"--policy-dir {d} is not a directory", "give a directory of *.yaml files")
    return search_path(dirs)


@dataclass
class Catalog:
    """Every policy of a search path, by name (the last file defining a name wins)."""

    by_name: dict[str, Loaded] = field(default_factory=dict)
    shadowed: list[Loaded] = field(default_factory=list)

    @property
    def bad(self) -> list[Loaded]:
        return [x for x in self.by_name.values() if not x.ok]

    def get(self, name: str) -> Policy:
        ld = self.by_name.get(name)
        if ld is None:
            known = ", ".join(sorted(n for n, x in self.by_name.items() if x.ok)) or "none"
            raise CgagentError(f"no policy named {name!r}", f"known policies: {known} (see `cgagent policy ls`)")
        if not ld.ok:
            raise PolicyFileError(ld.problems)
        assert ld.policy is not None
        return ld.policy


def catalog(extra_dirs: Iterable[str] | None = None) -> Catalog:
    cat = Catalog()
    for path in files_in(check_dirs(extra_dirs)):
        ld = load_file(path)
        prev = cat.by_name.get(ld.key)
        if prev is not None:
            cat.shadowed.append(prev)
        cat.by_name[ld.key] = ld
    return cat


def find(name: str, extra_dirs: Iterable[str] | None = None) -> Policy:
    """The policy `name` from the search path; its file's every problem if it is invalid."""
    return catalog(extra_dirs).get(name)
