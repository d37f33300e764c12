"""The `spiderpool` CNI IPAM plugin and the wire schema it shares with the agent (stdlib only)."""
