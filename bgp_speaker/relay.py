"""The helper ExaBGP runs: it hands ExaBGP's process pipes to the agent, then stays as a sentinel.

    python relay.py <socket-path> <token>

ExaBGP starts it with ``stdin``/``stdout`` pipes: it reads commands from our stdout and writes acks
and events to our stdin.  The relay connects to the agent's unix socket (SOCK_SEQPACKET) and sends
one message, ``hello <token>``, carrying both pipe ends as file descriptors (SCM_RIGHTS).  From then
on the agent reads ExaBGP's output and writes its commands on those pipes itself, so no byte takes
an extra process hop (that hop cost ~0.12 ms per command and a second wake-up per ack).  The relay
lets go of its own copies and waits on the socket: when the agent goes, the socket closes and the
relay exits; when the relay dies, the agent sees its socket close and restarts ExaBGP.  ExaBGP, for
its part, sees a helper that is alive for as long as the agent is.

Standard library only, run by file path: it must start fast and must not depend on the agent's
import path.  It never writes anything to stdout (ExaBGP would parse it as a command).
"""

from __future__ import annotations

import os
import socket
import sys
import time

CONNECT_TIMEOUT = 10.0


def _connect(path: str) -> socket.socket:
    deadline = time.monotonic() + CONNECT_TIMEOUT
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sock.connect(path)
            return sock
        except OSError:
            sock.close()
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        sys.stderr.write("usage: relay.py SOCKET TOKEN\n")
        return 2
    try:
        sock = _connect(argv[1])
        socket.send_fds(sock, [f"hello {argv[2]}\n".encode("ascii")], [0, 1])
    except OSError as exc:
        sys.stderr.write(f"spiderbgp relay: cannot reach the agent at {argv[1]}: {exc.strerror}\n")
        return 1
    # the agent holds the pipes now; our copies would keep them open after the agent is gone
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    try:
        while sock.recv(64):
            pass
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    sys.stdout.flush()
    os._exit(main(sys.argv))
