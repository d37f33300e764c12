"""The leader-only controller thread's lifecycle against a real SQLite store: losing and regaining
leadership quickly never leaves two controller threads, and stop() waits for every one of them."""

from __future__ import annotations

import threading
from pathlib import Path

from ipam.store.sqlite import SqliteStore
from spiderbgp.config import GcConfig, IpamConfig
from spiderbgp.leadership import ControllerThread


def controller_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "leader-controllers"]


def test_quick_regain_does_not_revive_the_old_thread(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db")
    released: list[list[tuple[str, str]]] = []
    thread = ControllerThread(
        store, IpamConfig(gc=GcConfig(trace_interval_seconds=0.1)), on_released=released.append
    )
    try:
        assert controller_threads() == []
        thread.start()
        [first] = controller_threads()
        thread.stop(timeout=0.0)  # what losing the Lease does on the event loop: no waiting
        thread.start()  # regained at once
        [second] = [t for t in controller_threads() if t is not first]
        # the old thread keeps its own (set) stop flag: it ends without another stop(), and then
        # exactly one controller thread runs, the new one
        first.join(timeout=5.0)
        assert not first.is_alive(), "the old controller thread was revived"
        assert controller_threads() == [second]
        thread.stop(timeout=5.0)
        assert controller_threads() == [], "a controller thread outlived stop()"
        # and it can lead again afterwards
        thread.start()
        assert len(controller_threads()) == 1
    finally:
        thread.stop(timeout=5.0)
        store.close()
    assert controller_threads() == []
    assert released == []  # nothing to collect in an empty store
