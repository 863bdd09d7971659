"""NAT for guests on nftables: one table per daemon, its guests in a set (docs/network.md).

The table is ``ip banger_<bridge>`` (one daemon owns one bridge, so two daemons on
a host never touch each other's table). It holds:

- ``nat_guests``, a set of guest addresses: adding or removing a VM changes its
  elements only;
- ``postrouting`` (nat): traffic from the set leaving through any interface but
  the bridge is masqueraded;
- ``forward`` (filter): bridge to bridge is accepted (guest to guest), the set
  may go out, replies come back to the bridge, and every other forwarded packet
  from or to the bridge is dropped, so a guest without NAT reaches the host and
  other guests and nothing else.

Everything is nftables' JSON (``nft -j -f -``): the documents are built by pure
functions from validated values, never from rule text. Deleting the table
removes everything banger added. The daemon reaches these through
``host.privileged.HostOps``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from banger.host.run import require_tool, run

FAMILY = "ip"
SET = "nat_guests"
NFT_TIMEOUT_S = 10.0
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
NFT_PACKAGE = "nftables"
Command = dict[str, Any]


def table_name(bridge: str) -> str:
    """The table of the daemon that owns ``bridge`` (a validated bridge name)."""
    return f"banger_{bridge}"


def _meta(key: str, op: str, value: str) -> Command:
    return {"match": {"op": op, "left": {"meta": {"key": key}}, "right": value}}


def _in_set() -> Command:
    return {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                      "right": f"@{SET}"}}


def _rule(table: str, chain: str, *expr: Command) -> Command:
    return {"add": {"rule": {"family": FAMILY, "table": table, "chain": chain,
                             "expr": list(expr)}}}


def _chain(table: str, name: str, kind: str, hook: str, prio: int) -> Command:
    return {"add": {"chain": {"family": FAMILY, "table": table, "name": name, "type": kind,
                              "hook": hook, "prio": prio, "policy": "accept"}}}


def _elements(verb: str, table: str, guests: tuple[str, ...]) -> Command:
    return {verb: {"element": {"family": FAMILY, "table": table, "name": SET,
                               "elem": list(guests)}}}


def _doc(commands: list[Command]) -> dict[str, Any]:
    return {"nftables": [{"metainfo": {"json_schema_version": 1}}, *commands]}


def table_document(bridge: str, guests: tuple[str, ...]) -> dict[str, Any]:
    """The whole table, replacing whatever is there, with exactly ``guests`` in the set.

    One transaction: ``add table`` (so the delete never fails), ``delete table``,
    then everything anew. Applied at the first use in a daemon's life, and at
    daemon start (reconcile), so rules someone changed are put right as well.
    """
    table = table_name(bridge)
    accept, drop = {"accept": None}, {"drop": None}
    commands: list[Command] = [
        {"add": {"table": {"family": FAMILY, "name": table}}},
        {"delete": {"table": {"family": FAMILY, "name": table}}},
        {"add": {"table": {"family": FAMILY, "name": table}}},
        {"add": {"set": {"family": FAMILY, "table": table, "name": SET, "type": "ipv4_addr"}}},
        _chain(table, "postrouting", "nat", "postrouting", 100),
        _rule(table, "postrouting", _in_set(), _meta("oifname", "!=", bridge),
              {"masquerade": None}),
        _chain(table, "forward", "filter", "forward", 0),
        _rule(table, "forward", _meta("iifname", "==", bridge), _meta("oifname", "==", bridge),
              accept),
        _rule(table, "forward", _meta("iifname", "==", bridge), _in_set(), accept),
        _rule(table, "forward", _meta("oifname", "==", bridge),
              {"match": {"op": "in", "left": {"ct": {"key": "state"}},
                         "right": ["established", "related"]}}, accept),
        _rule(table, "forward", _meta("iifname", "==", bridge), drop),
        _rule(table, "forward", _meta("oifname", "==", bridge), drop),
    ]
    if guests:
        commands.append(_elements("add", table, guests))
    return _doc(commands)


def add_document(bridge: str, guest: str) -> dict[str, Any]:
    """``guest`` into the set (adding an element that is there changes nothing)."""
    return _doc([_elements("add", table_name(bridge), (guest,))])


def remove_document(bridge: str, guest: str) -> dict[str, Any]:
    """``guest`` out of the set, idempotently: add then delete, in one transaction
    (nftables 1.0.6 has no ``destroy``, and deleting an absent element fails)."""
    table = table_name(bridge)
    return _doc([_elements("add", table, (guest,)), _elements("delete", table, (guest,))])


def apply(document: dict[str, Any]) -> None:
    """Run one document as one nftables transaction (blocking; ``CommandError`` on refusal)."""
    nft = require_tool("nft", NFT_PACKAGE)
    run([nft, "-j", "-f", "-"], input=json.dumps(document).encode(), timeout=NFT_TIMEOUT_S)


def list_guests(bridge: str) -> tuple[str, ...] | None:
    """The set's elements, or None when the table does not exist (blocking)."""
    nft = require_tool("nft", NFT_PACKAGE)
    done = run([nft, "-j", "list", "set", FAMILY, table_name(bridge), SET],
               timeout=NFT_TIMEOUT_S, check=False)
    if done.returncode != 0:
        return None
    return parse_set_elements(done.stdout)


def parse_set_elements(listing: bytes) -> tuple[str, ...]:
    """The addresses in ``nft -j list set`` output (plain addresses only)."""
    found: list[str] = []
    for item in json.loads(listing).get("nftables", []):
        elements = item.get("set", {}).get("elem", []) if isinstance(item, dict) else []
        found += [e for e in elements if isinstance(e, str)]
    return tuple(sorted(found))


def ip_forwarding(path: Path = IP_FORWARD) -> bool | None:
    """Whether the kernel forwards IPv4 (None when it cannot be read)."""
    try:
        return path.read_text().strip() == "1"
    except OSError:
        return None


def enable_ip_forwarding(path: Path = IP_FORWARD) -> None:
    """Turn IPv4 forwarding on (needs root or CAP_NET_ADMIN in this network namespace)."""
    path.write_text("1\n")
