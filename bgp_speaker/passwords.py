"""TCP-MD5 keys, read from the files named by ``bgp.peers[].passwordFile``.

A key never appears in a repr, a log line or an error message; it only goes (base64-encoded) into
the rendered ExaBGP config, which is written mode 0600.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bgp_speaker.config import MAX_PASSWORD_LENGTH, BgpConfig, BgpConfigError

__all__ = ["Secret", "read_passwords"]


@dataclass(frozen=True)
class Secret:
    """Bytes that print as ``Secret(***)``."""

    value: bytes = field(repr=False)

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__


def _read_bytes(path: str) -> bytes:
    return Path(path).read_bytes()


def read_passwords(cfg: BgpConfig, *, read: Callable[[str], bytes] = _read_bytes) -> Mapping[str, Secret]:
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
