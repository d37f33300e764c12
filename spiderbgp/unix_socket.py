"""A unix socket path a server is about to bind: its directory, a stale socket left by a process that
died, and a live one it must not take over."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

__all__ = ["SocketInUse", "prepare_socket_path"]


class SocketInUse(Exception):
    """Another live process answers on the socket path (one line, names the path)."""


def prepare_socket_path(socket_path: str) -> None:
    """Make ``socket_path`` ready to bind: its parent directory created 0700 when missing, a stale
    socket (nobody answers on it) removed; SocketInUse when something else is there or a live
    process listens on it."""
    path = Path(socket_path)
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True)
        os.chmod(path.parent, 0o700)  # mkdir's mode is subject to the umask
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketInUse(f"agent socket {socket_path}: exists and is not a socket; refusing to remove it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(socket_path)
    except OSError:
        path.unlink(missing_ok=True)  # stale: nobody listens
    else:
        raise SocketInUse(f"agent socket {socket_path}: another process is listening on it")
    finally:
        probe.close()
