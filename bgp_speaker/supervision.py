"""The files and processes around an ExaBGP generation, outside the speaker's event loop: the command
that runs ExaBGP, its runtime directory (rendered config, pid file, API socket, CLI pipes), and the
ExaBGP a previous agent with the same runtime directory left running.  The generation itself (start,
pipes, acks, death) is ``bgp_speaker.exabgp``; running one generation after another is the speaker's
supervisor task (``bgp_speaker.speaker``)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import stat
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from bgp_speaker.config import BgpConfig
from bgp_speaker.passwords import Secret
from bgp_speaker.render import render_exabgp_config

__all__ = [
    "CLI_PIPE_DIR",
    "RELAY_SCRIPT",
    "cli_pipename",
    "default_exabgp_command",
    "kill_leftover",
    "prepare_runtime_dir",
    "remove_runtime_files",
    "write_private",
]

LOG = logging.getLogger("bgp_speaker.speaker")

RELAY_SCRIPT = Path(__file__).with_name("relay.py")
CLI_PIPE_DIR = Path("/run/exabgp")


def default_exabgp_command(python: str = sys.executable) -> list[str]:
    """``<venv>/bin/exabgp server`` beside the interpreter, else ``python -m exabgp server``."""
    beside = Path(python).parent / "exabgp"
    if beside.exists():
        return [str(beside), "server"]
    return [python, "-m", "exabgp", "server"]


def cli_pipename(runtime_dir: str) -> str:
    """The ExaBGP CLI pipe name of the agent using ``runtime_dir`` (``exabgp-cli --pipename NAME``)."""
    return "spiderbgp-" + hashlib.sha1(runtime_dir.encode()).hexdigest()[:10]


def prepare_runtime_dir(
    config: BgpConfig, *, python: str, passwords: Mapping[str, Secret], cli_pipe: str | None
) -> str:
    """Make the runtime dir (0700) and, with ``cli_pipe``, ExaBGP's CLI pipes; returns the rendered
    ExaBGP config with the relay's token left as ``TOKEN`` (the token is per generation)."""
    d = Path(config.runtime_dir)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(d, 0o700)
    relay = [python, str(RELAY_SCRIPT), str(d / "api.sock"), "TOKEN"]
    template = render_exabgp_config(config, relay_argv=relay, passwords=passwords)
    if cli_pipe is not None:
        CLI_PIPE_DIR.mkdir(parents=True, exist_ok=True)
        for suffix in (".in", ".out"):
            path = CLI_PIPE_DIR / f"{cli_pipe}{suffix}"
            with contextlib.suppress(FileNotFoundError):
                if not stat.S_ISFIFO(path.stat().st_mode):
                    path.unlink()
            if not path.exists():
                os.mkfifo(path, 0o600)
    return template


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (the config holds BGP passwords)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def kill_leftover(runtime_dir: Path, *, grace: float = 5.0) -> None:
    """Stop an ExaBGP that a previous agent with the same runtime dir left running (found by its pid
    file and recognised by its config path on its command line): SIGTERM, SIGKILL after ``grace``."""
    pid_file = runtime_dir / "exabgp.pid"
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return
    if str(runtime_dir / "exabgp.conf").encode() in cmdline:
        LOG.warning("stopping ExaBGP %d left by a previous agent", pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def remove_runtime_files(runtime_dir: Path, *, cli_pipe: str | None) -> None:
    """Remove the API socket, the pid file and the CLI pipes of a stopped speaker."""
    for path in (runtime_dir / "api.sock", runtime_dir / "exabgp.pid"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    if cli_pipe is not None:
        for suffix in (".in", ".out"):
            with contextlib.suppress(FileNotFoundError):
                (CLI_PIPE_DIR / f"{cli_pipe}{suffix}").unlink()
