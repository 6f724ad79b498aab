"""The CLI as a thin client of a running agent: `ps`, `inspect`, `stop`, `rm`, `update`, `logs`,
`events` and `run -d` go through its API when <state dir>/agent.sock answers, with the output and
exit codes of the direct path. No typer, pydantic, pyroute2 or runtime on this path, and no typing
either: the modules a foreground run imports here take their annotations' names under a module-level
`TYPE_CHECKING = False` (mypy reads it as True), which spares each `cgagent run` typing's import.

main() returns None whenever the direct path should run instead: no agent (or CGAGENT_DIRECT=1), a
command or option not handled here (--help, --cgroup-driver, a foreground run ...): the full CLI then
does it (and reports usage errors) exactly as without an agent.
"""

from __future__ import annotations

import os
import sys

from cgagent.errors import CgagentError

TYPE_CHECKING = False   # not typing's own: the thin client's path does not import typing (see the module doc)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Parsed = tuple[dict[str, Any], list[str]]


def _parse(argv: list[str], flags: dict[str, str], values: dict[str, str],
           repeated: frozenset[str] = frozenset()) -> Parsed | None:
    """-> (options by name, positional args; a REPEATED option's values as a list), or None for
    anything unexpected (the full CLI decides)."""
    opts: dict[str, Any] = {}
    pos: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            pos += argv[i + 1:]
            break
        if not a.startswith("-") or a == "-":
            pos.append(a)
        else:
            key, eq, val = a.partition("=")
            if key in flags and not eq:
                opts[flags[key]] = True
            elif key in values:
                if not eq:
                    if i + 1 >= len(argv):
                        return None
                    i += 1
                    val = argv[i]
                if values[key] in repeated:
                    opts.setdefault(values[key], []).append(val)
                else:
                    opts[values[key]] = val
            else:
                return None
        i += 1
    return opts, pos


STATE = {"--state-dir": "state_dir"}


def _client(opts: dict[str, Any]) -> Any:
    from cgagent.api.client import agent

    c = agent(opts.get("state_dir") or os.environ.get("CGAGENT_STATE_DIR"))
    if c is not None:
        c.on_stderr = _print_stderr
    return c


def _print_stderr(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()


def _each(client: Any, names: list[str], act: Callable[[str], Any]) -> int:
    """As the direct path's _each: every name in turn, one line for each failure, the rest still done."""
    from cgagent.cli.errors import report

    code = 0
    for n in names:
        try:
            act(n)
        except CgagentError as e:
            code = report(e)
            continue
        print(n, flush=True)
    return code


def ps(argv: list[str]) -> int | None:
    from cgagent.cli import psview

    p = _parse(argv, {"-a": "all", "--all": "all", "--json": "json", "-q": "quiet", "--quiet": "quiet"},
               {**STATE, "--filter": "filter", "--format": "format"}, frozenset({"filter"}))
    if p is None or p[1]:
        return None
    opts = p[0]
    psview.parse_filters(opts.get("filter", []))   # a bad filter is refused before the agent is asked
    if (c := _client(opts)) is None:
        return None
    rows = c.json("GET", "/v1/ps", query={"all": bool(opts.get("all"))})
    psview.show(rows, quiet=bool(opts.get("quiet")), filters=opts.get("filter"), fmt=opts.get("format"),
                as_json=bool(opts.get("json")))
    return 0


def inspect(argv: list[str]) -> int | None:
    from cgagent.api.client import workload_url
    from cgagent.cli.gotemplate import show_inspect

    p = _parse(argv, {}, {**STATE, "-f": "format", "--format": "format"})
    if p is None or not p[1] or (c := _client(p[0])) is None:
        return None
    show_inspect([c.json("GET", workload_url(n)) for n in p[1]], p[0].get("format"))
    return 0


def stop(argv: list[str]) -> int | None:
    from cgagent.api.client import workload_url

    p = _parse(argv, {}, {**STATE, "-t": "time", "--time": "time"})
    if p is None or not p[1] or (c := _client(p[0])) is None:
        return None
    try:   # no -t: the workload's own --stop-timeout
        query = {"time": f"{float(p[0]['time']):g}"} if "time" in p[0] else {}
    except ValueError:
        return None
    return _each(c, p[1], lambda n: c.json("POST", workload_url(n, "stop"), query=query))


def rm(argv: list[str]) -> int | None:
    from cgagent.api.client import workload_url

    p = _parse(argv, {"-f": "force", "--force": "force"}, STATE)
    if p is None or not p[1] or (c := _client(p[0])) is None:
        return None
    force = bool(p[0].get("force"))
    if force and os.environ.get("CGAGENT_ROOT") and not all(_has_record(c, n) for n in p[1]):
        # -f also reclaims what a damaged or deleted record left, found by name in the image store:
        # the agent looks in its own, the caller means its $CGAGENT_ROOT: the direct path does them all
        return None
    return _each(c, p[1], lambda n: c.json("DELETE", workload_url(n), query={"force": force}))


def _has_record(c: Any, name: str) -> bool:
    from cgagent.api.client import workload_url

    r = c.raw("GET", workload_url(name))
    r.close()
    return bool(r.status == 200)


def update(argv: list[str]) -> int | None:
    from cgagent.api.client import workload_url
    from cgagent.runflags import OPTIONS

    # a repeatable (per-device) limit is left to the full CLI, which keeps every value
    values = {f: o.name for o in OPTIONS if o.lands == "limit" and o.update and o.kind == "value" for f in o.flags}
    p = _parse(argv, {}, {**STATE, **values})
    if p is None or len(p[1]) != 1 or (c := _client(p[0])) is None:
        return None
    limits = {k: v for k, v in p[0].items() if k != "state_dir"}
    if not limits:
        return None   # the direct path's "no limit given"
    up = c.json("POST", workload_url(p[1][0], "update"), limits)
    import json

    print(f"{up['name']}: {json.dumps(up['resources'])}")
    return 0


def logs(argv: list[str]) -> int | None:
    from cgagent.api.client import workload_url
    from cgagent.logtime import parse_since
    from cgagent.state import parse_tail

    p = _parse(argv, {"-f": "follow", "--follow": "follow", "-t": "timestamps", "--timestamps": "timestamps"},
               {**STATE, "--tail": "tail", "-n": "tail", "--since": "since"})
    if p is None or len(p[1]) != 1:
        return None
    parse_tail(p[0].get("tail"))   # refused here as on the direct path, before the agent is asked
    since = parse_since(p[0].get("since"))
    if (c := _client(p[0])) is None:
        return None
    # a duration is counted back from now HERE: the agent's clock reads the same, its "now" is later
    query = {"follow": bool(p[0].get("follow")), "tail": p[0].get("tail"), "timestamps": bool(p[0].get("timestamps")),
             "since": None if since is None else f"{since // 10**9}.{since % 10**9:09d}"}
    out = sys.stdout.buffer
    for chunk in c.call("GET", workload_url(p[1][0], "logs"), query=query).chunks():
        out.write(chunk)
        out.flush()
    return 0


def events(argv: list[str]) -> int | None:
    p = _parse(argv, {"-f": "follow", "--follow": "follow", "--json": "json"}, STATE)
    if p is None or len(p[1]) > 1 or (c := _client(p[0])) is None:
        return None
    import json

    from cgagent.cli.eventlog import format_event

    opts = p[0]
    query = {"name": p[1][0] if p[1] else None, "follow": bool(opts.get("follow"))}
    try:
        for line in c.call("GET", "/v1/events", query=query).lines():
            print(line.decode().rstrip("\n") if opts.get("json") else format_event(json.loads(line)), flush=True)
    except KeyboardInterrupt:
        pass   # as the direct path's `events -f`: Ctrl-C ends it quietly
    return 0


def run(argv: list[str]) -> int | None:
    """`run -d`: the same options as the fast path parses, sent as the API's run request with every
    default that depends on this process (environment, working directory) resolved here."""
    from cgagent.cli import fastrun

    parsed = fastrun.parse(argv)
    if parsed is None or any(parsed.values.get(k) for k in ("preserve_fds", "tty", "interactive")):
        return None   # fds beyond stdio, and the caller's terminal, are the direct path's
    if not parsed.values.get("detach"):
        from cgagent.api.client import default_socket, direct

        if direct() or not _stdio_open() or (body := request_body(parsed)) is None:
            return None
        from cgagent.api.runclient import run_attached

        # no probe first: a socket nobody listens on is Declined, before anything was sent
        return run_attached(default_socket(parsed.values.get("state_dir")), body)
    if (c := _client(parsed.values)) is None or (body := request_body(parsed)) is None:
        return None
    print(c.json("POST", "/v1/workloads", body)["name"])
    return 0


def _stdio_open() -> bool:
    try:
        for fd in (0, 1, 2):
            os.fstat(fd)
    except OSError:
        return False   # a closed stdin or stdout cannot be passed: the direct path runs with what there is
    return True


def request_body(p: Any) -> bytes | None:
    """fastrun.parse's result -> the API's run request (JSON), with this process's environment and
    directory: the agent builds the request in them, so that env defaults and relative paths mean
    what they mean here. None: too large to send (a huge environment)."""
    from cgagent.api.runclient import encode

    body: dict[str, Any] = {k: v for k, v in p.values.items() if k != "state_dir"}
    body["cmd"] = [p.image, "--", *p.cmd] if p.image else ["--", *p.cmd]   # as runflags.split_image reads them
    try:
        body["cwd"] = os.getcwd()
    except OSError:
        return None   # a removed directory: the direct path says what it says about that
    body["environ"] = dict(os.environ)
    data = encode(body)
    return data if len(data) <= MAX_BODY else None   # the direct path has no such bound


MAX_BODY = 60 * 1024   # under the agent's 64 KiB request bound


COMMANDS: dict[str, Callable[[list[str]], int | None]] = {
    "ps": ps, "inspect": inspect, "stop": stop, "rm": rm, "update": update, "logs": logs, "events": events,
    "run": run}


def main(argv: list[str]) -> int | None:
    """-> the exit code when the agent did it; None: use the direct path."""
    cmd = COMMANDS.get(argv[0]) if argv else None
    if cmd is None or "-h" in argv or "--help" in argv:
        return None
    from cgagent.api.client import Declined
    from cgagent.errors import report, run_code

    def own(code: int) -> int:
        """cgagent's own failure: `run` exits with Docker's codes, as on the direct path."""
        return run_code(code) if cmd is run else code

    try:
        return cmd(argv[1:])
    except Declined:
        return None   # before anything was done: the direct path does it all
    except CgagentError as e:
        return own(report(e))
    except ConnectionError as e:
        # the agent went away mid-call (stopped or restarted): say so; the workload keeps its supervisor
        return own(report(CgagentError(f"the agent closed the connection ({e})",
                                       "run the command again (without an agent it runs directly)", 1)))
