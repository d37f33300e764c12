"""lab.traffic.summarize: failures and the longest gap per target, from the client's request log."""

from __future__ import annotations

import json
from pathlib import Path

from lab.traffic import Record, read_records, summarize


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
