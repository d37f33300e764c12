"""python -m bench: every benchmark has short settings, and a name it does not know is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.__main__ import BENCHMARKS, SHORT, main

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"


def test_every_benchmark_module_is_run_with_short_settings() -> None:
    modules = sorted(p.stem.removeprefix("bench_") for p in BENCH_DIR.glob("bench_*.py"))
    assert sorted(BENCHMARKS) == modules
    assert set(SHORT) == set(BENCHMARKS)


def test_an_unknown_name_is_one_line_and_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["store", "nope"]) == 2
    err = capsys.readouterr().err
    assert err == f"unknown benchmark 'nope' (known: {', '.join(BENCHMARKS)})\n"
