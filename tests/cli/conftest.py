"""Fixtures for the CLI tests: ``spiderbgp.cli.main`` driven in-process with its own streams and
environment, against a SQLite store in tmp_path."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ipam.store.sqlite import SqliteStore
from spiderbgp.cli import main
from tests.service.world import dump


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


Run = Callable[..., Result]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "state.db"


@pytest.fixture
def run(db: Path) -> Run:
    """``run("get", "sp", env=..., stdin=...)``: one CLI invocation; the store is ``db`` via
    SPIDERBGP_STORE unless ``env`` says otherwise."""

    def invoke(*argv: str, env: dict[str, str] | None = None, stdin: str = "") -> Result:
        out, err = io.StringIO(), io.StringIO()
        code = main(
            list(argv),
            env={"SPIDERBGP_STORE": str(db)} if env is None else env,
            out=out,
            err=err,
            stdin=io.StringIO(stdin),
        )
        return Result(code, out.getvalue(), err.getvalue())

    return invoke


@contextmanager
def open_db(path: Path) -> Iterator[SqliteStore]:
    store = SqliteStore(path)
    try:
        yield store
    finally:
        store.close()


def snapshot(path: Path) -> dict[str, Any]:
    """Every object and record in the database, to prove that a failed command changed nothing."""
    with open_db(path) as store:
        return dump(store)
