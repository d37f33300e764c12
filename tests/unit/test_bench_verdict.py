"""bench.verdict: a figure against the reference measured beside it, the ratio, and the target's verdict."""

from __future__ import annotations

from bench.verdict import VERDICT_LINE, Comparison, at_least, at_most, within


def test_rate_at_least_half_the_reference() -> None:
    met = Comparison("fill", 2091, "store alone", 3614, "allocations/s", at_least(0.5))
    assert round(met.ratio, 2) == 0.58
    assert met.met is True
    assert met.line() == (
        "[met] fill: 2,091 allocations/s; reference store alone: 3,614 allocations/s; "
        "ratio 0.58; target ratio >= 0.50"
    )
    missed = Comparison("fill", 1700, "store alone", 3614, "allocations/s", at_least(0.5))
    assert missed.met is False
    assert missed.line().startswith("[MISSED] fill: 1,700 allocations/s;")


def test_time_at_most_a_ratio_and_within_a_difference() -> None:
    assert Comparison("last", 150, "first", 100, "us", at_most(1.5)).met is True
    assert Comparison("last", 151, "first", 100, "us", at_most(1.5)).met is False
    plugin = Comparison("plugin ADD p50", 12.1, "bare p50", 8.5, "ms", within(5.0, "ms"), digits=2)
    assert plugin.met is True
    assert "difference +3.60 ms; target figure - reference <= 5 ms" in plugin.line()
    assert Comparison("plugin ADD p50", 13.6, "bare p50", 8.5, "ms", within(5.0, "ms")).met is False


def test_no_target_is_context_and_a_zero_reference_misses() -> None:
    context = Comparison("racing", 25.0, "one agent", 20.0, "alloc/s", digits=1)
    assert context.met is None
    assert context.line() == ("[context] racing: 25.0 alloc/s; reference one agent: 20.0 alloc/s; ratio 1.25")
    assert Comparison("fill", 10, "nothing", 0, "/s", at_least(0.5)).met is False
    # BIRD's latency came out at -0.16 ms once under load (two clocks): a ratio to it means nothing
    assert Comparison("route -> UPDATE p50", 2.25, "BIRD p50", -0.16, "ms", at_most(2.0)).met is False


def test_the_summary_finds_every_verdict_line() -> None:
    lines = [
        Comparison("a", 1, "b", 1, "x", at_least(0.5)).line(),
        "  " + Comparison("a", 1, "b", 4, "x", at_least(0.5)).line(),
        Comparison("a", 1, "b", 1, "x").line(),
        "claim only: 3000 claims in 0.31s",
    ]
    found = [m.group(1) for line in lines if (m := VERDICT_LINE.match(line))]
    assert found == ["met", "MISSED", "context"]
