"""bgp_speaker: announces this node's pod IPs over BGP through an ExaBGP child process.

The agent builds a ``BgpSpeaker`` from ``parse_bgp_config(raw["bgp"], source=path)``, feeds it the
node's pod IPs and the pools' subnets, and reads ``status()`` / ``await routes()`` for the CLI.
"""

from bgp_speaker.commands import AdjRibRoute
from bgp_speaker.config import BgpConfig, BgpConfigError, PeerConfig, parse_bgp_config
from bgp_speaker.exabgp import ExabgpError
from bgp_speaker.kernel import HostRouteSource, NetlinkRouteSource, RouteBatch, RouteChange, source_address
from bgp_speaker.metrics import SpeakerMetrics
from bgp_speaker.routes import desired_routes
from bgp_speaker.speaker import BgpSpeaker, SpeakerNotRunning, cli_pipename, default_exabgp_command
from bgp_speaker.status import PeerStatus, format_routes_table, format_status_table

__all__ = [
    "AdjRibRoute",
    "BgpConfig",
    "BgpConfigError",
    "BgpSpeaker",
    "ExabgpError",
    "HostRouteSource",
    "NetlinkRouteSource",
    "PeerConfig",
    "PeerStatus",
    "RouteBatch",
    "RouteChange",
    "SpeakerMetrics",
    "SpeakerNotRunning",
    "cli_pipename",
    "default_exabgp_command",
    "desired_routes",
    "format_routes_table",
    "format_status_table",
    "parse_bgp_config",
    "source_address",
]
