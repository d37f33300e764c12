"""lab.traffic: the client's schedule for new targets, and summarize(): failures and the longest gap
per target, from the request log."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from lab.traffic import Record, read_records, run, summarize


def rec(t: float, ip: str, ok: bool) -> Record:
    return Record(t, ip, "p", ok, "p" if ok else "error: timed out", 1.0)


def test_counts_failures_and_the_longest_gap_per_target() -> None:
    records = [
        rec(0.0, "a", True),
        rec(0.5, "b", True),
        rec(1.0, "a", False),
        rec(1.5, "b", False),
        rec(2.0, "a", False),
        rec(2.5, "b", True),  # b: 1.0 s gap
        rec(4.0, "a", True),  # a: 3.0 s gap
    ]
    s = summarize(records)
    assert (s.total, s.failed, s.longest_gap) == (7, 3, 3.0)
    assert dict(s.failures) == {"a": 2, "b": 1}
    assert summarize(records, since=2.2).failed == 0
    assert summarize(records, until=2.2).longest_gap == 1.0  # a's gap still open: to its last request


def test_reads_a_log_and_skips_a_half_written_line(tmp_path: Path) -> None:
    log = tmp_path / "requests.jsonl"
    good = {"t": 1.0, "ip": "10.0.0.1", "pod": "x", "ok": True, "got": "x", "ms": 2.0}
    log.write_text(json.dumps(good) + "\n" + '{"t": 2.0, "ip"')
    assert read_records(log) == [Record(1.0, "10.0.0.1", "x", True, "x", 2.0)]
    assert read_records(tmp_path / "none") == []


def test_a_new_target_is_asked_often_until_it_first_answers(tmp_path: Path) -> None:
    """Round robin at 1 request/s, but a target new in the list is asked every 0.1 s until it answers
    (on loopback only: a server this test starts late, on a port it picked)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    targets = tmp_path / "targets.json"
    targets.write_text(json.dumps({"127.0.0.1": "pod-a"}))
    out_path = tmp_path / "requests.jsonl"
    stop = threading.Event()
    with out_path.open("w") as out:
        client = threading.Thread(
            target=run,
            args=(targets, out),
            kwargs={"rate": 1.0, "duration": 30.0, "timeout": 0.5, "port": port, "stop": stop},
        )
        client.start()
        server: http.server.HTTPServer | None = None
        try:
            wait_for(lambda: sum(not r.ok for r in read_records(out_path)) >= 3)  # nothing listens yet
            server = http.server.HTTPServer(("127.0.0.1", port), _Answer)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            wait_for(lambda: any(r.ok for r in read_records(out_path)))
        finally:
            stop.set()
            client.join(10)
            if server is not None:
                server.shutdown()
                server.server_close()
    records = read_records(out_path)
    first_ok = min(r.t for r in records if r.ok)
    assert sum(1 for r in records if r.t < first_ok) >= 3  # more than the round robin's one a second
    assert all(r.got == "pod-a" for r in records if r.ok)


class _Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"pod-a\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


def wait_for(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the timeout"
        time.sleep(0.02)
