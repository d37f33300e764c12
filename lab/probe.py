"""Fetch every pod's page from one place (the lab client), in parallel, and print JSON.

``python -m lab.probe 10.244.100.0 10.244.100.1`` prints ``{"10.244.100.0": "nginx-abc12", ...}``
with ``null`` for an IP that did not answer within the timeout.  One process probes all pods, so the
check costs one interpreter start, not one per pod."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

__all__ = ["fetch", "main"]


def fetch(ip: str, *, port: int = 80, timeout: float = 2.0) -> str | None:
    host = f"[{ip}]" if ":" in ip else ip
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/", timeout=timeout) as resp:
            return str(resp.read().decode().strip())
    except OSError:
        return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.probe")
    parser.add_argument("ips", nargs="*")
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args(argv)
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda ip: fetch(ip, port=args.port, timeout=args.timeout), args.ips))
    print(json.dumps(dict(zip(args.ips, answers, strict=True))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
