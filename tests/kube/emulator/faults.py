"""Faults the emulator injects, set by a test at any time from any thread."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

__all__ = ["Faults"]

# ---------------------------------------------------------------------------------------------------
# faults


@dataclass
class Faults:
    """What goes wrong, and when.  Change it at any time from any thread (under ``lock``)."""

    latency: float = 0.0  # seconds added before every request is handled (watch streams included)
    conflict_every: int = 0  # every Nth write (POST/PUT/DELETE) fails with 409 Conflict; 0: never
    conflict_writes: set[int] = field(default_factory=set)  # absolute write ordinals that fail with 409
    error_budget: int = 0  # the next N requests fail with ``error_status``
    error_status: int = 500
    error_methods: frozenset[str] = frozenset({"GET", "POST", "PUT", "DELETE"})
    drop_watch_budget: int = 0  # the next N watch streams that have an event to send are cut
    drop_watch_after: int = 0  # ... after sending this many more events
    writes: int = 0  # writes seen so far (counts faulted ones too)
    conflicts_injected: int = 0
    errors_injected: int = 0
    watches_dropped: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def conflict_on_writes(self, *nth: int) -> None:
        """Make the Nth write from now (1 = the next one) fail with 409 Conflict."""
        with self.lock:
            self.conflict_writes.update(self.writes + n for n in nth)

    def fail_requests(self, count: int, status: int = 500, methods: frozenset[str] | None = None) -> None:
        with self.lock:
            self.error_budget = count
            self.error_status = status
            if methods is not None:
                self.error_methods = methods

    def drop_watches(self, count: int, after_events: int = 0) -> None:
        with self.lock:
            self.drop_watch_budget = count
            self.drop_watch_after = after_events

    def take_error(self, method: str) -> int:
        with self.lock:
            if self.error_budget > 0 and method in self.error_methods:
                self.error_budget -= 1
                self.errors_injected += 1
                return self.error_status
            return 0

    def take_write_conflict(self) -> bool:
        with self.lock:
            self.writes += 1
            hit = self.writes in self.conflict_writes or (
                self.conflict_every > 0 and self.writes % self.conflict_every == 0
            )
            self.conflict_writes.discard(self.writes)
            if hit:
                self.conflicts_injected += 1
            return hit

    def take_watch_drop(self) -> int | None:
        """For a stream about to send an event: how many more events it may send before it is cut
        (None: it is not to be cut).  The budget goes to the first streams that send after it is set."""
        with self.lock:
            if self.drop_watch_budget > 0:
                self.drop_watch_budget -= 1
                self.watches_dropped += 1
                return self.drop_watch_after
            return None
