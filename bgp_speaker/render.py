"""ExaBGP's configuration file and environment, rendered from our BgpConfig (pure; golden-file tested).

What the rendering guarantees (see /work/shared/reference/bgp.md §A and lab-notes §10):
* outbound only: no ``listen``, no ``passive``, and ``exabgp.tcp.bind`` stays empty; every neighbor
  names its destination port with ``connect``;
* one process (the relay back to the agent) with ``encoder json`` and ``respawn false``: if the relay
  dies the agent restarts ExaBGP as a whole, so ExaBGP's 5-deaths-in-64-s limit is never reached;
* ``neighbor-changes`` in every neighbor's api block, so session state reaches the agent;
* ``adj-rib-out true`` (routes are re-sent after a reconnect) and, with graceful restart,
  ``manual-eor true`` so the End-of-RIB goes out only after the agent has replayed its routes;
* the MD5 key base64-encoded (``md5-base64 true``), so no character of it can break the syntax.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence

from bgp_speaker.config import BgpConfig, PeerConfig
from bgp_speaker.passwords import Secret

__all__ = ["PROCESS_NAME", "exabgp_environment", "render_exabgp_config"]

PROCESS_NAME = "spiderbgp"


def _peer_block(cfg: BgpConfig, peer: PeerConfig, password: Secret | None) -> list[str]:
    lines = [f"neighbor {peer.address} {{"]
    add = lines.append
    if peer.description:
        add(f'    description "{peer.description}";')
    add(f"    router-id {cfg.router_id};")
    add(f"    local-address {peer.local_address if peer.local_address is not None else 'auto'};")
    add(f"    local-as {cfg.asn};")
    add(f"    peer-as {peer.asn};")
    add(f"    connect {peer.port};")
    add(f"    hold-time {peer.hold_time};")
    if password is not None:
        add(f'    md5-password "{base64.b64encode(password.value).decode("ascii")}";')
        add("    md5-base64 true;")
    if peer.multihop is not None:
        add(f"    outgoing-ttl {peer.multihop};")
    if peer.ttl_security is not None:
        add(f"    incoming-ttl {256 - peer.ttl_security};")
    add("    group-updates true;")
    add("    adj-rib-out true;")
    add(f"    manual-eor {'true' if peer.graceful_restart > 0 else 'false'};")
    add("    capability {")
    add("        route-refresh;")
    if peer.graceful_restart > 0:
        add(f"        graceful-restart {peer.graceful_restart};")
    add("    }")
    add("    family {")
    for family in peer.families:
        add(f"        {family} unicast;")
    add("    }")
    add("    api {")
    add(f"        processes [ {PROCESS_NAME} ];")
    add("        neighbor-changes;")
    add("    }")
    add("}")
    return lines


def render_exabgp_config(
    cfg: BgpConfig, *, relay_argv: Sequence[str], passwords: Mapping[str, Secret]
) -> str:
    """The text of exabgp.conf.  ``relay_argv`` is the helper ExaBGP runs (absolute paths, no spaces)."""
    for arg in relay_argv:
        if not arg or any(c.isspace() or c in ';{}"' for c in arg):
            raise ValueError(f"relay argument {arg!r} cannot be written into an ExaBGP config")
    out = [
        f"# ExaBGP configuration rendered by spiderbgp from {cfg.source or 'its bgp config'}.",
        "# Rewritten at every start; do not edit.",
        "",
        f"process {PROCESS_NAME} {{",
        f"    run {' '.join(relay_argv)};",
        "    encoder json;",
        "    respawn false;",
        "}",
    ]
    for peer in cfg.peers:
        out.append("")
        out.extend(_peer_block(cfg, peer, passwords.get(peer.key)))
    return "\n".join(out) + "\n"


# ExaBGP's reactor sleeps in poll() for ``reactor.speed / 100`` seconds when it has no work.  A
# command on its API pipe or a BGP message wakes it at once whatever the value, so the value only
# sets how often an idle ExaBGP wakes up to look at its timers: 1.0 (its default, 100 wake-ups a
# second) cost 1.3-1.6 % of a core with one established peer and nothing to send; 5.0 (20 a second)
# costs 0.3-0.4 %.  The price: steps of the TCP connect that ExaBGP does not poll for wait for a
# tick, so a session comes up ~0.1 s later; keepalives and hold timers are seconds.  API commands
# are sized so that none waits for a tick (commands.NLRI_PER_LINE).
REACTOR_SPEED = "5.0"


def exabgp_environment(*, pipename: str, cli: bool, log_level: str = "WARNING") -> dict[str, str]:
    """The ``exabgp_*`` variables ExaBGP runs with (merged over a minimal base environment)."""
    return {
        "exabgp_reactor_speed": REACTOR_SPEED,
        "exabgp_daemon_user": "root",
        "exabgp_daemon_drop": "false",
        "exabgp_daemon_daemonize": "false",
        "exabgp_api_ack": "true",
        "exabgp_api_encoder": "json",
        "exabgp_api_respawn": "false",
        "exabgp_api_terminate": "false",
        "exabgp_api_cli": "true" if cli else "false",
        "exabgp_api_pipename": pipename,
        "exabgp_api_show-routes-format": "v2",
        "exabgp_api_chunk": "1",
        "exabgp_tcp_bind": "",
        "exabgp_log_destination": "stdout",
        "exabgp_log_level": log_level,
        "exabgp_log_short": "true",
    }
