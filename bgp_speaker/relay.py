"""The helper ExaBGP runs: a relay between ExaBGP's process pipes and the agent's unix socket.

    python relay.py <socket-path> <token>

ExaBGP starts it with ``stdin``/``stdout`` pipes: it reads commands from our stdout and writes acks
and events to our stdin.  The relay connects to the agent's socket, sends ``hello <token>`` so the
agent knows which ExaBGP generation this is, then copies bytes both ways: socket -> stdout
(commands) and stdin -> socket (acks, events, show output).  It never interprets a line.  Each
direction runs on its own thread, so ExaBGP's writes never block on the agent.  When either side
closes, the relay exits, and the agent (which watches both the socket and the ExaBGP process)
restarts ExaBGP.

Standard library only, run by file path: it must start fast and must not depend on the agent's
import path.  It never writes anything of its own to stdout (ExaBGP would parse it as a command).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time

CONNECT_TIMEOUT = 10.0


def _connect(path: str) -> socket.socket:
    deadline = time.monotonic() + CONNECT_TIMEOUT
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except OSError:
            sock.close()
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def _pump_in(sock: socket.socket, done: threading.Event) -> None:
    """ExaBGP -> agent: our stdin to the socket."""
    try:
        while True:
            data = os.read(0, 65536)
            if not data:
                break
            sock.sendall(data)
    except OSError:
        pass
    finally:
        done.set()


def _pump_out(sock: socket.socket, done: threading.Event) -> None:
    """agent -> ExaBGP: the socket to our stdout."""
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                break
            view = memoryview(data)
            while view:
                n = os.write(1, view)
                view = view[n:]
    except OSError:
        pass
    finally:
        done.set()


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        sys.stderr.write("usage: relay.py SOCKET TOKEN\n")
        return 2
    try:
        sock = _connect(argv[1])
        sock.sendall(f"hello {argv[2]}\n".encode("ascii"))
    except OSError as exc:
        sys.stderr.write(f"spiderbgp relay: cannot reach the agent at {argv[1]}: {exc.strerror}\n")
        return 1
    done = threading.Event()
    for pump in (_pump_in, _pump_out):
        threading.Thread(target=pump, args=(sock, done), daemon=True).start()
    done.wait()
    return 0


if __name__ == "__main__":
    sys.stdout.flush()
    os._exit(main(sys.argv))
