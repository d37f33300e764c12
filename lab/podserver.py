"""The lab's pod workload: a tiny HTTP server that answers every GET with its pod's name.

Run inside a pod's namespace: ``python -m lab.podserver --name nginx-abc12 --port 80``.  It prints
``ready`` on stdout once it listens, so the kubelet stand-in knows when the pod is Ready."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["PodHandler", "main", "serve"]


class PodHandler(BaseHTTPRequestHandler):
    pod_name = ""

    def do_GET(self) -> None:
        body = f"{self.pod_name}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # quiet: one pod, many probes
        return


def serve(name: str, host: str, port: int) -> ThreadingHTTPServer:
    handler = type("Handler", (PodHandler,), {"pod_name": name})
    return ThreadingHTTPServer((host, port), handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.podserver")
    parser.add_argument("--name", required=True)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=80)
    args = parser.parse_args(argv)
    server = serve(args.name, args.host, args.port)
    print("ready", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
