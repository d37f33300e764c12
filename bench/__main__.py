"""Run every benchmark, one process each: ``python -m bench [NAME ...]`` (names: store ipam cni kube bgp lab).

Each prints its figures beside the reference it is measured against (the store alone for the IPAM
service, the bare interpreter and host-local for the plugin, one agent alone for the Kubernetes race,
BIRD and raw ExaBGP for BGP convergence, Spiderpool's published 1,000-pod figure for the lab).
Targets live here, never in timed tests.
"""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = ("store", "ipam", "cni", "kube", "bgp", "lab")


def main(argv: list[str]) -> int:
    names = argv or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark {unknown[0]!r} (known: {', '.join(BENCHMARKS)})", file=sys.stderr)
        return 2
    failed = 0
    for name in names:
        print(f"==> bench.bench_{name}", flush=True)
        failed += subprocess.run([sys.executable, "-m", f"bench.bench_{name}"], check=False).returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
