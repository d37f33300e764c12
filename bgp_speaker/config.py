"""The agent config's ``bgp:`` section, parsed once into frozen values with one-line errors.

```yaml
bgp:
  asn: 64512                      # required: this node's AS
  routerId: 172.16.13.11          # default: nextHop when it is IPv4 (required otherwise)
  nextHop: 172.16.13.11           # required: the node's peering address, next hop of every route;
                                  #   "auto": the address this node sends from towards the first peer
                                  #   (Calico's can-reach autodetection), read from the kernel at start
  nextHopV6: fd00:13::11          # IPv6 next hop (default: nextHop when nextHop is IPv6; "auto" too)
  advertise: host                 # host (one /32 or /128 per pod IP) | aggregate | pool
                                  #   | block (each affine SpiderIPBlock as one prefix, blackholed in
                                  #   this node's kernel, plus a /32 or /128 per borrowed address)
  exportCIDRs: [10.244.0.0/16]    # optional: narrow the pools' subnets further
  withdrawOnExit: false           # withdraw everything (and wait for the acks) when the agent stops
  requireHostRoute: true          # announce an IP only once the node's kernel routes it locally
  reconcileInterval: 30           # seconds between adj-rib-out reconciliations (0 = never)
  runtimeDir: /run/spiderbgp/bgp  # ExaBGP config, relay socket, CLI pipes (one per agent)
  announceWhen: ready             # ready: the pod is Ready (and routed) | allocated: routed is enough
  damping:                        # RFC 2439 flap damping of pod prefixes; off without this section
    enabled: true                 # default true once the section is there
    halfLife: 900                 # seconds for the penalty to halve
    reuse: 750                    # a suppressed prefix comes back when its penalty decays to this
    suppress: 2000                # a prefix is suppressed when its penalty goes above this
    maxSuppress: 3600             # seconds: the longest suppression after the last withdrawal
    penalty: 1000                 # added by each withdrawal
  nodeCondition: true             # the agent keeps the Node's NetworkUnavailable condition True until BGP is up
  peers:
    - address: 172.16.13.1        # IPv4 or IPv6
      asn: 23000
      localAddress: 172.16.13.11  # default: the next hop of the peer's family, else "auto"
      port: 179
      passwordFile: /etc/spiderbgp/router.md5   # TCP MD5 key, read when the speaker starts
      holdTime: 90                # 0 or 3..65535
      multihop: 2                 # eBGP multihop: the TTL of our packets (1..255)
      ttlSecurity: 1              # GTSM: the peer is at most this many hops away (not with multihop)
      gracefulRestart: 120        # restart time announced to the peer, 0 = no graceful restart
      families: [ipv4, ipv6]      # default: every family with a next hop
      communities: ["64512:100", no-export]
      largeCommunities: ["64512:1:100"]
      localPref: 200
      med: 10
      maxPrefixes: 5000           # never announce more than this to the peer
      description: tor-a
```
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from bgp_speaker.damping import DampingParams

__all__ = [
    "ADVERTISE_MODES",
    "ANNOUNCE_WHEN",
    "DEFAULT_RUNTIME_DIR",
    "FAMILIES",
    "WELL_KNOWN_COMMUNITIES",
    "AdvertiseMode",
    "AnnounceWhen",
    "BgpConfig",
    "BgpConfigError",
    "Family",
    "IPAddress",
    "IPNetwork",
    "PeerConfig",
    "family_of",
    "parse_bgp_config",
    "unusable_address",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Family = Literal["ipv4", "ipv6"]
AdvertiseMode = Literal["host", "aggregate", "pool", "block"]
AnnounceWhen = Literal["ready", "allocated"]

FAMILIES: tuple[Family, ...] = ("ipv4", "ipv6")
ADVERTISE_MODES: tuple[AdvertiseMode, ...] = ("host", "aggregate", "pool", "block")
ANNOUNCE_WHEN: tuple[AnnounceWhen, ...] = ("ready", "allocated")
WELL_KNOWN_COMMUNITIES = frozenset(
    {"no-export", "no-advertise", "no-export-subconfed", "no-peer", "nopeer", "blackhole"}
)
DEFAULT_RUNTIME_DIR = "/run/spiderbgp/bgp"
MAX_ASN = 2**32 - 1
MAX_PASSWORD_LENGTH = 80  # ExaBGP's and the kernel's TCP-MD5 limit
MAX_RUNTIME_DIR = 96  # + "/api.sock" stays below the 108-byte unix socket path limit
MAX_SECONDS = 7 * 24 * 3600  # the longest interval a number field takes (a week)

_COMMUNITY = re.compile(r"^(\d{1,5}):(\d{1,5})$")
_LARGE_COMMUNITY = re.compile(r"^(\d{1,10}):(\d{1,10}):(\d{1,10})$")
_DESCRIPTION = re.compile(r"^[A-Za-z0-9 ._:/@+-]{0,80}$")


class BgpConfigError(ValueError):
    """``<source>: <field.path>: <reason>``: the one line a user sees."""

    def __init__(self, source: str, field: str, reason: str) -> None:
        self.source, self.field, self.reason = source, field, reason
        super().__init__(f"{source}: {field}: {reason}" if source else f"{field}: {reason}")


def family_of(value: IPAddress | IPNetwork) -> Family:
    return "ipv4" if value.version == 4 else "ipv6"


@dataclass(frozen=True)
class PeerConfig:
    address: IPAddress
    asn: int
    local_address: IPAddress | None = None  # None: ExaBGP picks the source address ("auto")
    port: int = 179
    password_file: str | None = None  # the key itself is read by bgp_speaker.passwords, never kept here
    hold_time: int = 90
    multihop: int | None = None
    ttl_security: int | None = None
    graceful_restart: int = 120
    families: tuple[Family, ...] = ("ipv4",)
    communities: tuple[str, ...] = ()
    large_communities: tuple[str, ...] = ()
    local_pref: int | None = None
    med: int | None = None
    max_prefixes: int | None = None
    description: str = ""
    index: int = 0  # position in bgp.peers, for error messages

    @property
    def key(self) -> str:
        """The peer's address as ExaBGP prints it (the identity used everywhere)."""
        return str(self.address)

    @property
    def field(self) -> str:
        return f"bgp.peers[{self.index}]"


@dataclass(frozen=True)
class BgpConfig:
    asn: int
    router_id: ipaddress.IPv4Address
    next_hop_v4: ipaddress.IPv4Address | None
    next_hop_v6: ipaddress.IPv6Address | None
    peers: tuple[PeerConfig, ...]
    advertise: AdvertiseMode = "host"
    export_cidrs: tuple[IPNetwork, ...] = ()  # empty: the pools' subnets are the only limit
    withdraw_on_exit: bool = False
    require_host_route: bool = True
    reconcile_interval: float = 30.0
    runtime_dir: str = DEFAULT_RUNTIME_DIR
    source: str = ""
    announce_when: AnnounceWhen = "ready"
    damping: DampingParams | None = None  # None: no flap damping
    node_condition: bool = True  # the agent writes the Node's NetworkUnavailable condition

    def next_hop(self, family: Family) -> IPAddress | None:
        return self.next_hop_v4 if family == "ipv4" else self.next_hop_v6

    @property
    def graceful_restart(self) -> bool:
        return any(p.graceful_restart > 0 for p in self.peers)


class _Reader:
    """One mapping being read; remembers which keys were used so typos are reported."""

    def __init__(self, raw: object, *, source: str, path: str) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise BgpConfigError(source, path, f"must be a mapping, not {_kind(raw)}")
        self.raw: Mapping[Any, Any] = raw
        self.source = source
        self.path = path
        self._seen: set[str] = set()

    def name(self, key: str) -> str:
        return f"{self.path}.{key}"

    def error(self, key: str, reason: str) -> BgpConfigError:
        return BgpConfigError(self.source, self.name(key), reason)

    def get(self, key: str) -> object:
        self._seen.add(key)
        return self.raw.get(key)

    def integer(self, key: str, default: int | None, *, minimum: int, maximum: int) -> int | None:
        value = self.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"must be an integer, not {value!r}")
        if not minimum <= value <= maximum:
            raise self.error(key, f"must be between {minimum} and {maximum}, not {value}")
        return value

    def required_integer(self, key: str, *, minimum: int, maximum: int) -> int:
        value = self.integer(key, None, minimum=minimum, maximum=maximum)
        if value is None:
            raise self.error(key, "is required")
        return value

    def number(self, key: str, default: float, *, minimum: float) -> float:
        value = self.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"must be a number, not {value!r}")
        if not math.isfinite(value):
            raise self.error(key, f"must be a finite number, not {value}")
        if value < minimum:
            raise self.error(key, f"must be at least {minimum:g}, not {value}")
        if value > MAX_SECONDS:
            raise self.error(key, f"must be at most {MAX_SECONDS:g}, not {value}")
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, not {value!r}")
        return value

    def string(self, key: str) -> str | None:
        value = self.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, f"must be a non-empty string, not {value!r}")
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise self.error(key, "must not contain control characters")
        return value

    def address(self, key: str) -> IPAddress | None:
        text = self.get(key)
        if text is None:
            return None
        if not isinstance(text, str):
            raise self.error(key, f"must be an IP address, not {text!r}")
        try:
            return ipaddress.ip_address(text.strip())
        except ValueError:
            raise self.error(key, f"{text!r} is not an IPv4 or IPv6 address") from None

    def string_list(self, key: str) -> list[tuple[str, str]]:
        """The items of a list of strings, each with its own field path."""
        value = self.get(key)
        if value is None:
            return []
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise self.error(key, f"must be a list, not {_kind(value)}")
        items: list[tuple[str, str]] = []
        for i, item in enumerate(value):
            where = f"{self.name(key)}[{i}]"
            if isinstance(item, bool) or not isinstance(item, str | int):
                raise BgpConfigError(self.source, where, f"must be a string, not {item!r}")
            text = str(item).strip()
            if not text or any(ord(c) < 32 or ord(c) == 127 for c in text):
                raise BgpConfigError(self.source, where, f"invalid value {item!r}")
            items.append((where, text))
        return items

    def done(self) -> None:
        known = sorted(self._seen)
        for key in sorted(self.raw, key=str):
            if key in self._seen:
                continue
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise BgpConfigError(self.source, self.name(str(key)), f"unknown field{hint}")


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def unusable_address(address: IPAddress) -> str | None:
    """Why ``address`` cannot be a BGP peer, local address or next hop (None: it can): ExaBGP and the
    kernel take no IPv6 zone (``fe80::1%eth0``), a link-local IPv6 address needs one, an IPv4-mapped
    IPv6 address is an IPv4 host in disguise, and unspecified, loopback, multicast and reserved
    (240.0.0.0/4, with the broadcast address) addresses reach no router."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id is not None:
            return "has a zone (%...), which ExaBGP cannot use"
        if address.ipv4_mapped is not None:
            return f"is IPv4-mapped (use {address.ipv4_mapped})"
        if address.is_link_local:
            return "is link-local, which needs a zone ExaBGP cannot use"
    if address.is_unspecified or address.is_loopback or address.is_multicast:
        return "is unspecified, loopback or multicast"
    if isinstance(address, ipaddress.IPv4Address) and address.is_reserved:
        return "is reserved (240.0.0.0/4, with 255.255.255.255)"
    return None


def _community(source: str, where: str, text: str) -> str:
    low = text.lower().replace("_", "-")
    if low in WELL_KNOWN_COMMUNITIES:
        return "no-peer" if low == "nopeer" else low
    m = _COMMUNITY.match(text)
    if not m or any(int(part) > 0xFFFF for part in m.groups()):
        raise BgpConfigError(
            source, where, f"{text!r} is not a community (ASN:VALUE, each 0..65535, or a well-known name)"
        )
    return f"{int(m.group(1))}:{int(m.group(2))}"


def _large_community(source: str, where: str, text: str) -> str:
    m = _LARGE_COMMUNITY.match(text)
    if not m or any(int(part) > MAX_ASN for part in m.groups()):
        raise BgpConfigError(
            source, where, f"{text!r} is not a large community (GLOBAL:LOCAL1:LOCAL2, each 0..4294967295)"
        )
    return ":".join(str(int(part)) for part in m.groups())


def _parse_peer(
    raw: object,
    index: int,
    *,
    source: str,
    next_hops: Mapping[Family, IPAddress | None],
) -> PeerConfig:
    r = _Reader(raw, source=source, path=f"bgp.peers[{index}]")
    address = r.address("address")
    if address is None:
        raise r.error("address", "is required")
    if (why := unusable_address(address)) is not None:
        raise r.error("address", f"{address} cannot be a BGP peer: it {why}")
    asn = r.required_integer("asn", minimum=1, maximum=MAX_ASN)
    local = r.address("localAddress")
    if local is not None and (why := unusable_address(local)) is not None:
        raise r.error("localAddress", f"{local} cannot be a local address: it {why}")
    if local is not None and local.version != address.version:
        raise r.error("localAddress", f"{local} is not of the same family as the peer {address}")
    if local is None:
        local = next_hops[family_of(address)]
    port = r.integer("port", 179, minimum=1, maximum=65535)
    password_file = r.string("passwordFile")
    if password_file is not None and not password_file.startswith("/"):
        raise r.error("passwordFile", f"must be an absolute path, not {password_file!r}")
    hold = r.integer("holdTime", 90, minimum=0, maximum=65535)
    if hold is not None and 0 < hold < 3:
        raise r.error("holdTime", "must be 0 or >= 3")
    multihop = r.integer("multihop", None, minimum=1, maximum=255)
    ttl_security = r.integer("ttlSecurity", None, minimum=1, maximum=254)
    if multihop is not None and ttl_security is not None:
        raise r.error("ttlSecurity", "cannot be combined with multihop (choose one)")
    gr = r.integer("gracefulRestart", 120, minimum=0, maximum=4095)
    families_raw = r.string_list("families")
    families: list[Family] = []
    for where, text in families_raw:
        fam = text.lower().removesuffix(" unicast").removesuffix("-unicast")
        if fam not in FAMILIES:
            raise BgpConfigError(source, where, f"must be ipv4 or ipv6, not {text!r}")
        if fam in families:
            raise BgpConfigError(source, where, f"{fam} is listed twice")
        if next_hops[fam] is None:
            need = "nextHop" if fam == "ipv4" else "nextHopV6"
            raise BgpConfigError(source, where, f"{fam} needs an {fam} next hop (set bgp.{need})")
        families.append(fam)
    if not families_raw:
        families = [f for f in FAMILIES if next_hops[f] is not None]
    communities = tuple(_community(source, w, t) for w, t in r.string_list("communities"))
    large = tuple(_large_community(source, w, t) for w, t in r.string_list("largeCommunities"))
    local_pref = r.integer("localPref", None, minimum=0, maximum=MAX_ASN)
    med = r.integer("med", None, minimum=0, maximum=MAX_ASN)
    max_prefixes = r.integer("maxPrefixes", None, minimum=1, maximum=10_000_000)
    description = r.string("description") or ""
    if not _DESCRIPTION.match(description):
        raise r.error("description", "may only hold letters, digits, spaces and ._:/@+- (at most 80)")
    r.done()
    assert hold is not None and gr is not None and port is not None
    return PeerConfig(
        address=address,
        asn=asn,
        local_address=local,
        port=port,
        password_file=password_file,
        hold_time=hold,
        multihop=multihop,
        ttl_security=ttl_security,
        graceful_restart=gr,
        families=tuple(families),
        communities=communities,
        large_communities=large,
        local_pref=local_pref,
        med=med,
        max_prefixes=max_prefixes,
        description=description,
        index=index,
    )


def _parse_damping(raw: object, *, source: str) -> DampingParams | None:
    """``bgp.damping``: None when absent or ``enabled: false``."""
    if raw is None:
        return None
    r = _Reader(raw, source=source, path="bgp.damping")
    enabled = r.boolean("enabled", True)
    base = DampingParams()
    params = DampingParams(
        half_life=r.number("halfLife", base.half_life, minimum=0.001),
        reuse=r.number("reuse", base.reuse, minimum=1.0),
        suppress=r.number("suppress", base.suppress, minimum=1.0),
        max_suppress=r.number("maxSuppress", base.max_suppress, minimum=0.001),
        penalty=r.number("penalty", base.penalty, minimum=1.0),
    )
    r.done()
    problem = params.problem()
    if problem is not None:
        raise r.error(*problem)
    return params if enabled else None


SourceAddress = Callable[[IPAddress], IPAddress | None]
"""The address this node would send from towards a destination (None: no route there)."""

AUTO = "auto"


def _auto_next_hop(r: _Reader, key: str, version: int | None, resolve: SourceAddress | None) -> IPAddress:
    """``key: auto``: the source address towards the first peer (of ``version``, if given)."""
    if resolve is None:
        raise r.error(key, "auto needs the node's routing table: only the agent can resolve it")
    peers = r.raw.get("peers")
    for item in peers if isinstance(peers, Sequence) and not isinstance(peers, str) else ():
        text = item.get("address") if isinstance(item, Mapping) else None
        try:
            peer = ipaddress.ip_address(text.strip()) if isinstance(text, str) else None
        except ValueError:
            peer = None  # reported with its own field below
        if peer is None or (version is not None and peer.version != version):
            continue
        found = resolve(peer)
        if found is None:
            raise r.error(key, f"auto: this node has no route to peer {peer}")
        return found
    family = f"IPv{version} " if version is not None else ""
    raise r.error(key, f"auto: there is no {family}peer to find this node's address towards")


def _hop(r: _Reader, key: str, version: int | None, resolve: SourceAddress | None) -> IPAddress | None:
    if r.raw.get(key) == AUTO:
        r.get(key)
        return _auto_next_hop(r, key, version, resolve)
    return r.address(key)


def parse_bgp_config(
    raw: Mapping[str, Any] | None, *, source: str, source_address: SourceAddress | None = None
) -> BgpConfig:
    """Validate the ``bgp`` section; raises BgpConfigError (one line naming the field) on any problem.

    ``source_address`` resolves ``nextHop: auto`` / ``nextHopV6: auto`` (the agent passes the kernel's
    answer, ``bgp_speaker.kernel.source_address``; without it, ``auto`` is an error)."""
    r = _Reader(raw, source=source, path="bgp")
    asn = r.required_integer("asn", minimum=1, maximum=MAX_ASN)
    next_hop = _hop(r, "nextHop", None, source_address)
    if next_hop is None:
        raise r.error("nextHop", "is required (the node's peering address, or auto)")
    next_hop_v6 = _hop(r, "nextHopV6", 6, source_address)
    if next_hop_v6 is not None and next_hop_v6.version != 6:
        raise r.error("nextHopV6", f"{next_hop_v6} is not an IPv6 address")
    if next_hop.version == 6 and next_hop_v6 is not None and next_hop_v6 != next_hop:
        raise r.error("nextHopV6", "conflicts with the IPv6 nextHop")
    nh4 = next_hop if isinstance(next_hop, ipaddress.IPv4Address) else None
    nh6 = next_hop_v6 or (next_hop if isinstance(next_hop, ipaddress.IPv6Address) else None)
    for key, hop in (("nextHop", nh4), ("nextHopV6" if next_hop_v6 is not None else "nextHop", nh6)):
        if hop is not None and (why := unusable_address(hop)) is not None:
            raise r.error(key, f"{hop} cannot be a next hop: it {why}")
    router_id = r.address("routerId")
    if router_id is None:
        if nh4 is None:
            raise r.error("routerId", "is required when nextHop is not IPv4")
        router_id = nh4
    if not isinstance(router_id, ipaddress.IPv4Address) or router_id.is_unspecified:
        raise r.error("routerId", f"must be a non-zero IPv4 address, not {router_id}")
    advertise = r.string("advertise") or "host"
    if advertise not in ADVERTISE_MODES:
        raise r.error("advertise", f"must be one of {', '.join(ADVERTISE_MODES)}, not {advertise!r}")
    cidrs: list[IPNetwork] = []
    for where, text in r.string_list("exportCIDRs"):
        try:
            cidrs.append(ipaddress.ip_network(text, strict=True))
        except ValueError as exc:
            raise BgpConfigError(source, where, f"{text!r} is not a CIDR ({exc})") from None
    withdraw_on_exit = r.boolean("withdrawOnExit", False)
    require_host_route = r.boolean("requireHostRoute", True)
    reconcile = r.number("reconcileInterval", 30.0, minimum=0.0)
    runtime_dir = r.string("runtimeDir") or DEFAULT_RUNTIME_DIR
    if not runtime_dir.startswith("/"):
        raise r.error("runtimeDir", f"must be an absolute path, not {runtime_dir!r}")
    if any(c.isspace() or c in ';{}"#' for c in runtime_dir):
        raise r.error(
            "runtimeDir", "must not contain spaces or any of ;{}\"# (it is written into ExaBGP's config)"
        )
    if len(runtime_dir.encode()) > MAX_RUNTIME_DIR:
        raise r.error(
            "runtimeDir", f"must be at most {MAX_RUNTIME_DIR} bytes long (a unix socket lives in it)"
        )
    announce_when = r.string("announceWhen") or "ready"
    if announce_when not in ANNOUNCE_WHEN:
        raise r.error("announceWhen", f"must be one of {', '.join(ANNOUNCE_WHEN)}, not {announce_when!r}")
    damping = _parse_damping(r.get("damping"), source=source)
    node_condition = r.boolean("nodeCondition", True)
    peers_raw = r.get("peers")
    if peers_raw is None or (isinstance(peers_raw, Sequence) and not peers_raw):
        raise r.error("peers", "at least one peer is required")
    if isinstance(peers_raw, str) or not isinstance(peers_raw, Sequence):
        raise r.error("peers", f"must be a list, not {_kind(peers_raw)}")
    hops: dict[Family, IPAddress | None] = {"ipv4": nh4, "ipv6": nh6}
    peers = tuple(_parse_peer(p, i, source=source, next_hops=hops) for i, p in enumerate(peers_raw))
    seen: dict[IPAddress, int] = {}
    for p in peers:
        if p.address in seen:
            raise BgpConfigError(
                source, f"{p.field}.address", f"{p.address} is already bgp.peers[{seen[p.address]}]"
            )
        seen[p.address] = p.index
        if p.address in (nh4, nh6):
            raise BgpConfigError(source, f"{p.field}.address", f"{p.address} is this node's own address")
    r.done()
    return BgpConfig(
        asn=asn,
        router_id=router_id,
        next_hop_v4=nh4,
        next_hop_v6=nh6,
        peers=peers,
        advertise=advertise,
        export_cidrs=tuple(cidrs),
        withdraw_on_exit=withdraw_on_exit,
        require_host_route=require_host_route,
        reconcile_interval=reconcile,
        runtime_dir=runtime_dir,
        source=source,
        announce_when=announce_when,
        damping=damping,
        node_condition=node_condition,
    )
