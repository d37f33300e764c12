"""A steady client for the lab: HTTP GETs to every pod, round robin, at a fixed rate, each one logged.

    python -m lab.traffic --targets TARGETS.json --out REQUESTS.jsonl --rate 40 [--duration 60]

Runs inside the lab's client namespace (it only ever sends to the pod addresses it is given, which
live in the lab's namespaces).  TARGETS.json holds ``{"ip": "pod name", ...}`` and is read again
whenever it changes, so pods can come and go while it runs; a new target is also asked every 0.1 s
until its first answer (for up to 10 s), so the time to a new pod's first answer is measured to that.  Every request is one JSON line
``{"t": start (unix time), "ip": ..., "pod": expected name, "ok": bool, "got": answer or error,
"ms": latency}``; a request fails when it gets no answer within ``--timeout`` or the wrong pod
answers.  Prints ``ready`` once it sends; stops on SIGTERM/SIGINT or after ``--duration`` seconds,
after the requests in flight have finished (bounded by the timeout).

``summarize(records)`` is the pure part the tests and bench/bench_rollout.py use.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

__all__ = ["Record", "Summary", "main", "read_records", "run", "summarize"]

FRESH_EVERY = 0.1  # seconds between two requests to a target that has not answered yet
FRESH_FOR = 10.0  # ... for at most this long after it appeared in the list


@dataclass(frozen=True)
class Record:
    t: float
    ip: str
    pod: str
    ok: bool
    got: str
    ms: float

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Record:
        return cls(
            float(data["t"]),
            str(data["ip"]),
            str(data.get("pod", "")),
            bool(data["ok"]),
            str(data.get("got", "")),
            float(data.get("ms", 0.0)),
        )


@dataclass(frozen=True)
class Summary:
    total: int
    failed: int
    longest_gap: float  # seconds: the longest run of failures to one target (first failure -> next success)
    failures: Mapping[str, int] = field(default_factory=dict)  # per target ip

    def line(self) -> str:
        return f"{self.total} requests, {self.failed} failed, longest gap {self.longest_gap:.2f} s"


def summarize(records: Iterable[Record], *, since: float = 0.0, until: float = float("inf")) -> Summary:
    """Totals over the requests started in [since, until); a gap that is still open at the end runs
    to the last request to that target."""
    chosen = sorted((r for r in records if since <= r.t < until), key=lambda r: r.t)
    failures: dict[str, int] = {}
    first_failure: dict[str, float] = {}
    last_seen: dict[str, float] = {}
    longest = 0.0
    for r in chosen:
        last_seen[r.ip] = r.t
        if r.ok:
            started = first_failure.pop(r.ip, None)
            if started is not None:
                longest = max(longest, r.t - started)
        else:
            failures[r.ip] = failures.get(r.ip, 0) + 1
            first_failure.setdefault(r.ip, r.t)
    for ip, started in first_failure.items():
        longest = max(longest, last_seen[ip] - started)
    return Summary(len(chosen), sum(failures.values()), longest, failures)


def read_records(path: Path) -> list[Record]:
    """The records of a log written by this client (a line still being written is skipped)."""
    out: list[Record] = []
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            out.append(Record.from_json(json.loads(line)))
        except (ValueError, KeyError, TypeError):
            continue
    return out


def _get(ip: str, *, port: int, timeout: float) -> str:
    host = f"[{ip}]" if ":" in ip else ip
    with urllib.request.urlopen(f"http://{host}:{port}/", timeout=timeout) as resp:
        return str(resp.read().decode(errors="replace").strip())


class _Targets:
    """TARGETS.json, read again when its mtime changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime = -1.0
        self.items: list[tuple[str, str]] = []

    def refresh(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
            if mtime == self._mtime:
                return
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return  # missing or half-written: keep the last good list
        if isinstance(data, dict):
            self.items = sorted((str(ip), str(name)) for ip, name in data.items())
            self._mtime = mtime


def run(
    targets: Path,
    out: TextIO,
    *,
    rate: float,
    duration: float,
    timeout: float,
    port: int,
    stop: threading.Event,
) -> int:
    lock = threading.Lock()
    table = _Targets(targets)
    sent = 0
    # a target new in the list is asked every FRESH_EVERY s (besides its turn in the round robin)
    # until it first answers, so its first answer is timed to that, not to the round robin's period
    known: set[str] = set()
    fresh: dict[str, float] = {}  # ip -> when it appeared
    answered: set[str] = set()

    def one(ip: str, pod: str) -> None:
        started = time.time()
        clock = time.monotonic()
        try:
            got = _get(ip, port=port, timeout=timeout)
            ok = got == pod or not pod
        except OSError as exc:
            got, ok = f"error: {exc}", False
        line = json.dumps(
            {
                "t": started,
                "ip": ip,
                "pod": pod,
                "ok": ok,
                "got": got[:200],
                "ms": (time.monotonic() - clock) * 1e3,
            }
        )
        with lock:
            out.write(line + "\n")
            out.flush()
            if ok:
                answered.add(ip)

    interval = 1.0 / rate
    deadline = time.monotonic() + duration
    # enough workers that a target that does not answer for ``timeout`` never holds up the schedule
    with ThreadPoolExecutor(max_workers=max(8, int(rate * timeout * 2) + 4)) as pool:
        print("ready", flush=True)
        next_at = time.monotonic()
        next_fresh = 0.0
        i = 0
        while not stop.is_set() and time.monotonic() < deadline:
            table.refresh()
            now = time.monotonic()
            for ip, _pod in table.items:
                if ip not in known:
                    known.add(ip)
                    fresh[ip] = now
            with lock:
                done = {ip for ip in fresh if ip in answered or now - fresh[ip] > FRESH_FOR}
                answered.clear()
            for ip in done:
                fresh.pop(ip, None)
            if fresh and now >= next_fresh:
                names = dict(table.items)
                for ip in fresh:
                    if ip in names:
                        pool.submit(one, ip, names[ip])
                        sent += 1
                next_fresh = now + FRESH_EVERY
            if table.items:
                ip, pod = table.items[i % len(table.items)]
                i += 1
                pool.submit(one, ip, pod)
                sent += 1
            next_at += interval
            stop.wait(max(0.0, next_at - time.monotonic()))
    return sent


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.traffic")
    parser.add_argument("--targets", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--rate", type=float, default=40.0, help="requests per second, all targets together")
    parser.add_argument("--duration", type=float, default=600.0, help="stop after this many seconds")
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--port", type=int, default=80)
    args = parser.parse_args(argv)
    if not 0 < args.rate <= 1000 or not 0 < args.duration <= 3600 or not 0 < args.timeout <= 10:
        print(
            "error: --rate must be in (0, 1000], --duration in (0, 3600], --timeout in (0, 10]",
            file=sys.stderr,
        )
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    with os.fdopen(fd, "w") as out:
        run(
            args.targets,
            out,
            rate=args.rate,
            duration=args.duration,
            timeout=args.timeout,
            port=args.port,
            stop=stop,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
