"""bgp_speaker: announces this node's pod IPs over BGP through an ExaBGP child process."""

from bgp_speaker.config import BgpConfig, BgpConfigError, PeerConfig, parse_bgp_config

__all__ = ["BgpConfig", "BgpConfigError", "PeerConfig", "parse_bgp_config"]
