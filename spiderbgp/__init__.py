"""spiderbgp: the composition root (agent, CLI, metrics and health) that wires ipam, cni and bgp_speaker."""
