"""TCP-MD5 keys, read from the files named by ``bgp.peers[].passwordFile``.

A key never appears in a repr, a log line or an error message; it only goes (base64-encoded) into
the rendered ExaBGP config, which is written mode 0600.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from bgp_speaker.config import MAX_PASSWORD_LENGTH, BgpConfig, BgpConfigError

__all__ = ["KeyFileError", "Secret", "read_key_file", "read_passwords"]


@dataclass(frozen=True)
class Secret:
    """Bytes that print as ``Secret(***)``."""

    value: bytes = field(repr=False)

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__


class KeyFileError(Exception):
    """A password file that must not be used as it is (the reason, one line)."""


MAX_KEY_FILE = 4096  # a key is at most 80 bytes; anything much larger is not a key file


def read_key_file(path: str) -> bytes:
    """The bytes of a key file that only its owner can read: a regular file (not a directory, a FIFO
    that would block, or a device) without group or other permissions, as ssh insists for its keys."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{path} is not a regular file")
        if st.st_mode & 0o077:
            mode = stat.S_IMODE(st.st_mode)
            raise KeyFileError(f"{path} is readable by others (mode {mode:04o}); chmod 600 it")
        return os.read(fd, MAX_KEY_FILE + 1)
    finally:
        os.close(fd)


def read_passwords(cfg: BgpConfig, *, read: Callable[[str], bytes] = read_key_file) -> Mapping[str, Secret]:
    """Peer key (address) -> MD5 key, for the peers with a passwordFile.

    One trailing newline is dropped; the key must be 1..80 bytes without other control characters."""
    keys: dict[str, Secret] = {}
    for peer in cfg.peers:
        if peer.password_file is None:
            continue
        where = f"{peer.field}.passwordFile"
        try:
            raw = read(peer.password_file)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise BgpConfigError(cfg.source, where, f"cannot read {peer.password_file}: {reason}") from None
        except KeyFileError as exc:
            raise BgpConfigError(cfg.source, where, str(exc)) from None
        if raw.endswith(b"\r\n"):
            raw = raw[:-2]
        elif raw.endswith(b"\n"):
            raw = raw[:-1]
        if not raw:
            raise BgpConfigError(cfg.source, where, f"{peer.password_file} is empty")
        if len(raw) > MAX_PASSWORD_LENGTH:
            raise BgpConfigError(
                cfg.source,
                where,
                f"the key in {peer.password_file} is longer than {MAX_PASSWORD_LENGTH} bytes",
            )
        if any(b < 32 or b == 127 for b in raw):
            raise BgpConfigError(
                cfg.source, where, f"the key in {peer.password_file} contains control characters"
            )
        keys[peer.key] = Secret(raw)
    return keys
