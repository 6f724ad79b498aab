"""NAT for workloads through one nftables table (`ip cgagent`), fed by `nft -f -`.

The rules are static; what changes are set and map elements, so a workload's ports and a network's
masquerade are added and removed as elements, never by rule handle:
  masq      sources to masquerade (the pools workloads get addresses from)
  internal  destinations that are not masqueraded (every network's subnet, whole overlays)
  ports     proto . host port -> workload address . port (DNAT; `create element` fails if published)
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

from cgagent.errors import CgagentError

TABLE = "cgagent"

_TABLE_DEF = f"""
table ip {TABLE} {{
  set masq {{ type ipv4_addr; flags interval; }}
  set internal {{ type ipv4_addr; flags interval; }}
  map ports {{ type inet_proto . inet_service : ipv4_addr . inet_service; }}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    meta l4proto {{ tcp, udp }} fib daddr type local dnat ip to meta l4proto . th dport map @ports
  }}
  chain output {{
    type nat hook output priority -100; policy accept;
    meta l4proto {{ tcp, udp }} fib daddr type local dnat ip to meta l4proto . th dport map @ports
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ct status dnat ip saddr 127.0.0.0/8 masquerade
    ct status dnat ip saddr @masq ip daddr @masq masquerade
    ip saddr @masq ip daddr != @internal masquerade
  }}
}}
"""


def _run(args: list[str], script: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["nft", *args], input=script, capture_output=True, text=True)
    except FileNotFoundError:
        raise CgagentError("nft is not installed", "install nftables (apt-get install nftables)") from None


def _nft(script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = _run(["-f", "-"], script)
    if check and res.returncode != 0:
        raise CgagentError(f"nft failed: {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else '?'}",
                           "see `nft list table ip cgagent`")
    return res


def table_exists() -> bool:
    res = _run(["list", "table", "ip", TABLE])
    return res.returncode == 0


def ensure_table() -> None:
    if not table_exists():
        _nft(_TABLE_DEF)


def delete_table() -> None:
    _nft(f"delete table ip {TABLE}", check=False)


def _elements(name: str) -> list[object]:
    res = _run(["-j", "list", "set" if name != "ports" else "map", "ip", TABLE, name])
    if res.returncode != 0:
        return []
    for obj in json.loads(res.stdout).get("nftables", []):
        body = obj.get("set") or obj.get("map")
        if body:
            return list(body.get("elem", []))
    return []


def _prefix_str(e: object) -> str:
    if isinstance(e, dict) and "prefix" in e:
        return f"{e['prefix']['addr']}/{e['prefix']['len']}"
    if isinstance(e, dict) and "range" in e:
        return "-".join(e["range"])
    return str(e)


def subnets(name: str) -> list[str]:
    return [_prefix_str(e) for e in _elements(name)]


def add_network(pool: str | None, internal: str) -> None:
    """Masquerade what leaves `pool` for anywhere outside the `internal` subnet."""
    ensure_table()
    have_m, have_i = set(subnets("masq")), set(subnets("internal"))
    script = ""
    if pool and pool not in have_m:
        script += f"add element ip {TABLE} masq {{ {pool} }}\n"
    if internal not in have_i:
        script += f"add element ip {TABLE} internal {{ {internal} }}\n"
    if script:
        _nft(script)


def remove_network(pool: str | None, internal: str) -> None:
    if not table_exists():
        return
    script = ""
    if pool and pool in subnets("masq"):
        script += f"delete element ip {TABLE} masq {{ {pool} }}\n"
    if internal in subnets("internal"):
        script += f"delete element ip {TABLE} internal {{ {internal} }}\n"
    if script:
        _nft(script, check=False)
    if not subnets("masq") and not subnets("internal") and not published():
        delete_table()


def published() -> dict[tuple[str, int], tuple[str, int]]:
    """(proto, host port) -> (address, port) for every published port."""
    out: dict[tuple[str, int], tuple[str, int]] = {}
    for e in _elements("ports"):
        try:
            key: Any = e["elem"][0] if isinstance(e, dict) and "elem" in e else e[0]  # type: ignore[index]
            val: Any = e["elem"][1] if isinstance(e, dict) and "elem" in e else e[1]  # type: ignore[index]
            proto, port = key["concat"]
            addr, cport = val["concat"]
            out[(str(proto), int(port))] = (str(addr), int(cport))
        except (TypeError, ValueError, KeyError):
            continue
    return out


def publish(ports: list[tuple[str, int, int]], addr: str) -> None:
    """DNAT each (proto, host port, workload port) to `addr`: all or none (one nft transaction)."""
    if not ports:
        return
    ensure_table()
    elems = ", ".join(f"{p} . {hp} : {addr} . {cp}" for p, hp, cp in ports)
    res = _nft(f"create element ip {TABLE} ports {{ {elems} }}\n", check=False)
    if res.returncode != 0:
        taken = published()
        for p, hp, _ in ports:
            if (p, hp) in taken:
                raise CgagentError(f"port {hp}/{p} is already published (to {taken[(p, hp)][0]})",
                                   "choose another host port")
        raise CgagentError(f"nft failed: {res.stderr.strip()}", "see `nft list table ip cgagent`")


def unpublish(ports: list[tuple[str, int, int]], addr: str) -> None:
    """Remove the DNAT entries that still point at `addr` (idempotent)."""
    if not ports or not table_exists():
        return
    taken = published()
    keys = [f"{p} . {hp}" for p, hp, _ in ports if taken.get((p, hp), ("", 0))[0] == addr]
    if keys:
        _nft(f"delete element ip {TABLE} ports {{ {', '.join(keys)} }}\n", check=False)
