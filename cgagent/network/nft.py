"""NAT and filtering for workloads through two nftables tables owned by cgagent, fed by `nft -f -`.

The rules are static; what changes are set and map elements, so networks, workloads and ports are
added and removed as elements, never by rule handle.

`ip cgagent` (routed traffic):
  bridges   our bridges (a workload's packets enter the host's IP layer through one of these)
  overlays  our vxlan devices (other hosts' workloads arrive through them)
  masq      sources to masquerade (the pools workloads get addresses from)
  internal  destinations that are not masqueraded (every network's subnet, whole overlays)
  ports     proto . host port -> workload address . port (DNAT on every local address but loopback)
  ports_at  host address . proto . host port -> workload address . port (DNAT on that address only)
  guard     before conntrack: nothing from a bridge to or from 127.0.0.0/8 (CVE-2020-8558; the kernel
            drops these as martians too unless someone sets route_localnet, which cgagent never does)
  intra     bridge . bridge: with br_netfilter loaded, traffic inside one bridge passes `forward` too
  forward   established/related, published (DNAT'd) traffic, traffic inside one network, overlay
            peers and what leaves a bridge for elsewhere pass; anything else headed into a bridge is
            dropped (other networks, routed strangers)
`bridge cgagent` (frames inside a bridge, before they are switched or routed):
  guarded   the host ends of workloads' veths
  pairs     host end . MAC . IPv4 address a workload was given: a frame from a guarded port whose
            MAC, IP source or ARP sender is not that workload's is dropped (anti-spoofing), and so is
            anything but IPv4 and ARP (the networks are IPv4 only)
Loopback publishing is not done here: see proxy.py.
"""

from __future__ import annotations

import json
from typing import Any

from cgagent.errors import CgagentError
from cgagent.network import libnft

TABLE = "cgagent"
ANY = "0.0.0.0"

_BRIDGE_DEF = f"""
add table bridge {TABLE}
delete table bridge {TABLE}
table bridge {TABLE} {{
  set guarded {{ type ifname; }}
  set pairs {{ type ifname . ether_addr . ipv4_addr; }}
  chain prerouting {{
    type filter hook prerouting priority -300; policy accept;
    iifname != @guarded accept
    meta protocol ip iifname . ether saddr . ip saddr != @pairs drop
    meta protocol arp iifname . ether saddr . arp saddr ip != @pairs drop
    meta protocol arp iifname . arp saddr ether . arp saddr ip != @pairs drop
    meta protocol != {{ ip, arp }} drop
  }}
}}
"""

# the same in prerouting (from elsewhere) and output (from the host): a specific address first, then
# any address but loopback (no route_localnet: loopback is the proxy's)
_DNAT = """
    meta l4proto { tcp, udp } fib daddr type local dnat ip to ip daddr . meta l4proto . th dport map @ports_at
    meta l4proto { tcp, udp } fib daddr type local ip daddr != 127.0.0.0/8 \\
      dnat ip to meta l4proto . th dport map @ports
"""

_TABLE_DEF = f"""
table ip {TABLE} {{
  set bridges {{ type ifname; }}
  set overlays {{ type ifname; }}
  set intra {{ type ifname . ifname; }}
  set masq {{ type ipv4_addr; flags interval; }}
  set internal {{ type ipv4_addr; flags interval; }}
  map ports {{ type inet_proto . inet_service : ipv4_addr . inet_service; }}
  map ports_at {{ type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }}
  chain guard {{
    type filter hook prerouting priority raw; policy accept;
    iifname @bridges ip daddr 127.0.0.0/8 drop
    iifname @bridges ip saddr 127.0.0.0/8 drop
  }}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;{_DNAT}  }}
  chain output {{
    type nat hook output priority -100; policy accept;{_DNAT}  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ct status dnat ip saddr @masq ip daddr @masq masquerade
    ip saddr @masq ip daddr != @internal masquerade
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    ct state established,related accept
    ct status dnat accept
    iifname . oifname @intra accept
    iifname @overlays oifname @bridges accept
    iifname @bridges oifname != @bridges accept
    oifname @bridges drop
  }}
}}
"""

_IP_SETS = ("bridges", "overlays", "intra", "masq", "internal", "ports", "ports_at")


def _run(cmd: str, json_out: bool = False) -> libnft.Result:
    """`cmd` (an nft script) through libnftables in this process, else through the `nft` program."""
    lib = libnft.library()
    if lib is not None:
        return lib.run(cmd, json_out)
    # a listing as arguments: `nft -f -` answers 0 and nothing for a table that does not exist
    import subprocess  # here: only without libnftables

    args = ["-j", *cmd.split()] if json_out else ["-f", "-"]
    try:
        p = subprocess.run(["nft", *args], input=None if json_out else cmd, capture_output=True, text=True)
    except FileNotFoundError:
        raise CgagentError("nft is not installed", "install nftables (apt-get install nftables)") from None
    return libnft.Result(p.returncode, p.stdout, p.stderr)



def warm() -> None:
    """Make this process's libnftables context now, with a listing that changes nothing: its first
    command costs ~1.6 ms more than the next (attach.warm). Without the library: nothing."""
    lib = libnft.library()
    if lib is not None:
        lib.run("list tables")

def _nft(script: str, check: bool = True) -> libnft.Result:
    res = _run(script)
    if check and res.returncode != 0:
        raise CgagentError(f"nft failed: {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else '?'}",
                           "see `nft list table ip cgagent`")
    return res


def _snapshot(family: str = "ip") -> dict[str, list[Any]] | None:
    """set/map name -> its elements, in one `nft -j list table`; None when the table does not exist."""
    res = _run(f"list table {family} {TABLE}", json_out=True)
    if res.returncode != 0:
        return None
    out: dict[str, list[Any]] = {}
    for obj in json.loads(res.stdout).get("nftables", []):
        body = obj.get("set") or obj.get("map")
        if body:
            out[str(body.get("name"))] = list(body.get("elem", []))
    return out


def table_exists() -> bool:
    return _snapshot() is not None


def ensure_table() -> None:
    if not table_exists():
        _nft(_BRIDGE_DEF + _TABLE_DEF)


Port = tuple[str, str, str]   # a bridge port's anti-spoofing key: host end, MAC, IPv4 address


def _add(script: str, stale: tuple[Port, ...] = ()) -> None:
    """Run an `add element` script, making the tables first when they are missing, and forget the
    elements of `stale` ports (gone links) in the same run: one nft run in the common case (a launch
    pays ~10 ms for each, the kernel's wait in its commit)."""
    if _nft(_forget_script(stale) + script, check=False).returncode == 0:
        return
    _forget_each(stale)   # one of them was forgotten already (a prune, a table made anew)
    if _nft(script, check=False).returncode != 0:
        ensure_table()
        _nft(script)


def delete_table() -> None:
    _nft(f"delete table ip {TABLE}", check=False)
    _nft(f"delete table bridge {TABLE}", check=False)


def _prefix_str(e: object) -> str:
    if isinstance(e, dict) and "prefix" in e:
        return f"{e['prefix']['addr']}/{e['prefix']['len']}"
    if isinstance(e, dict) and "range" in e:
        return "-".join(e["range"])
    return str(e)


def _key_val(e: Any) -> tuple[list[Any], list[Any]]:
    """A map element as (key parts, value parts); set elements have no value."""
    if isinstance(e, dict) and "elem" in e:
        e = e["elem"]
    if isinstance(e, list) and len(e) == 2:
        k, v = e
        return (list(k["concat"]) if isinstance(k, dict) else [k]), (list(v["concat"]) if isinstance(v, dict) else [v])
    return (list(e["concat"]) if isinstance(e, dict) and "concat" in e else [e]), []


def subnets(name: str) -> list[str]:
    return [_prefix_str(e) for e in (_snapshot() or {}).get(name, [])]


def add_network(bridge: str, pool: str | None, internal: str, overlay: str | None = None,
                port: Port | None = None, stale: tuple[Port, ...] = ()) -> None:
    """Masquerade what leaves `pool` for anywhere outside `internal`; filter `bridge` (idempotent: `add
    element` of an existing element is no error, so a network made half-way is completed here); with
    `port`, guard that (port, MAC, address) in the same nft run, and forget `stale` ports' elements."""
    b = json.dumps(bridge)
    script = f"add element ip {TABLE} bridges {{ {b} }}\nadd element ip {TABLE} intra {{ {b} . {b} }}\n"
    script += f"add element ip {TABLE} internal {{ {internal} }}\n"
    if pool:
        script += f"add element ip {TABLE} masq {{ {pool} }}\n"
    if overlay:
        script += f"add element ip {TABLE} overlays {{ {json.dumps(overlay)} }}\n"
    if port:
        script += _guard_script("add", *port)
    _add(script, stale)


def _empty(snap: dict[str, list[Any]]) -> bool:
    return not any(snap.get(n) for n in _IP_SETS)


def remove_network(bridge: str | None, pool: str | None, internal: str, overlay: str | None = None) -> None:
    snap = _snapshot()
    if snap is None:
        _nft(f"delete table bridge {TABLE}", check=False)
        return
    script = ""
    have = {n: {_prefix_str(e) for e in snap.get(n, [])} for n in ("bridges", "overlays", "masq", "internal")}
    for name, value in (("bridges", bridge), ("overlays", overlay), ("masq", pool), ("internal", internal)):
        if value and value in have[name]:
            elem = json.dumps(value) if name in ("bridges", "overlays") else value
            script += f"delete element ip {TABLE} {name} {{ {elem} }}\n"
            snap[name] = [e for e in snap[name] if _prefix_str(e) != value]
    if bridge and any(_key_val(e)[0][:1] == [bridge] for e in snap.get("intra", [])):
        script += f"delete element ip {TABLE} intra {{ {json.dumps(bridge)} . {json.dumps(bridge)} }}\n"
        snap["intra"] = [e for e in snap["intra"] if _key_val(e)[0][:1] != [bridge]]
    if script:
        _nft(script, check=False)
    if _empty(snap):
        delete_table()


def _guard_script(verb: str, port: str, mac: str, addr: str) -> str:
    return (f"{verb} element bridge {TABLE} pairs {{ {json.dumps(port)} . {mac} . {addr} }}\n"
            f"{verb} element bridge {TABLE} guarded {{ {json.dumps(port)} }}\n")


def guard(port: Port, stale: tuple[Port, ...] = ()) -> None:
    """Anti-spoofing for one (port, MAC, address) alone: an underlay's workloads need no NAT or filters."""
    _add(_guard_script("add", *port), stale)


def forget_ports(stale: tuple[Port, ...]) -> None:
    """Forget the elements of ports whose links are gone, in one nft run when all are still there."""
    if stale and _nft(_forget_script(stale), check=False).returncode != 0:
        _forget_each(stale)


def _forget_script(stale: tuple[Port, ...]) -> str:
    return "".join(_guard_script("delete", *p) for p in stale)


def _forget_each(stale: tuple[Port, ...]) -> None:
    for p in stale:
        unguard(*p)


def guarded_ports() -> set[str]:
    """Every port the bridge table holds an element of."""
    snap = _snapshot("bridge") or {}
    return {str(e) for e in snap.get("guarded", [])} | {str(_key_val(e)[0][0]) for e in snap.get("pairs", [])}


def unguard(port: str, mac: str | None = None, addr: str | None = None) -> None:
    """Forget every rule element of bridge port `port` (idempotent): the known ones in one nft run,
    else whatever the table holds for the port."""
    if mac and addr and _nft(_guard_script("delete", port, mac, addr), check=False).returncode == 0:
        return
    snap = _snapshot("bridge")
    if not snap:
        return
    script = ""
    for e in snap.get("pairs", []):
        k, _ = _key_val(e)
        if k and k[0] == port:
            script += f"delete element bridge {TABLE} pairs {{ {json.dumps(port)} . {k[1]} . {k[2]} }}\n"
    if port in {str(e) for e in snap.get("guarded", [])}:
        script += f"delete element bridge {TABLE} guarded {{ {json.dumps(port)} }}\n"
    if script:
        _nft(script, check=False)


# nft names an inet_proto key part through getprotobynumber(): on a host without /etc/protocols (no
# netbase, as in a minimal Debian) it lists `6 . 8080`, not `tcp . 8080`. Lookups here go by name.
_PROTO_NAMES = {"6": "tcp", "17": "udp"}


def _proto(part: object) -> str:
    return _PROTO_NAMES.get(str(part), str(part))


def published() -> dict[tuple[str, int, str], tuple[str, int]]:
    """(proto, host port, host address or ANY) -> (workload address, port) for every DNAT'd port."""
    out: dict[tuple[str, int, str], tuple[str, int]] = {}
    snap = _snapshot() or {}
    for name in ("ports", "ports_at"):
        for e in snap.get(name, []):
            try:
                k, v = _key_val(e)
                hip = str(k.pop(0)) if name == "ports_at" else ANY
                out[(_proto(k[0]), int(k[1]), hip)] = (str(v[0]), int(v[1]))
            except (TypeError, ValueError, KeyError, IndexError):
                continue
    return out


def _elem(p: str, hp: int, hip: str) -> tuple[str, str]:
    """(map, key) of one published port."""
    return ("ports", f"{p} . {hp}") if hip == ANY else ("ports_at", f"{hip} . {p} . {hp}")


def publish(ports: list[tuple[str, int, int, str]], addr: str) -> None:
    """DNAT each (proto, host port, workload port, host address) to `addr`: all or none (one nft
    transaction). Loopback addresses are the proxy's (proxy.py), not DNAT's."""
    ports = [p for p in ports if not p[3].startswith("127.")]
    if not ports:
        return
    ensure_table()
    script = ""
    for p, hp, cp, hip in ports:
        m, key = _elem(p, hp, hip)
        script += f"create element ip {TABLE} {m} {{ {key} : {addr} . {cp} }}\n"
    res = _nft(script, check=False)
    if res.returncode != 0:
        taken = published()
        for p, hp, _, hip in ports:
            if (p, hp, hip) in taken:
                raise CgagentError(f"port {hp}/{p} is already published (to {taken[(p, hp, hip)][0]})",
                                   "choose another host port")
        raise CgagentError(f"nft failed: {res.stderr.strip()}", "see `nft list table ip cgagent`")


def unpublish(ports: list[tuple[str, int, int, str]], addr: str) -> None:
    """Remove the DNAT entries that still point at `addr` (idempotent)."""
    ports = [p for p in ports if not p[3].startswith("127.")]
    if not ports:
        return
    taken = published()
    script = ""
    for p, hp, _, hip in ports:
        if taken.get((p, hp, hip), ("", 0))[0] == addr:
            m, key = _elem(p, hp, hip)
            script += f"delete element ip {TABLE} {m} {{ {key} }}\n"
    if script:
        _nft(script, check=False)


def check_installed() -> None:
    """Before anything is made: a missing nft is one line, not a half-made network."""
    import shutil

    if libnft.library() is None and shutil.which("nft") is None:
        raise CgagentError("nft is not installed", "install nftables (apt-get install nftables)")
