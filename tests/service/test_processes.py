"""The issue's race test through the real IPAM service: several processes (spawned, each with its own
IpamService and SqliteStore) allocate from one pool through one database file for distinct pods, and
one of them is SIGKILLed in the middle of the storm.

Every IP a process reported over its pipe was reported after ``allocate`` returned, so it must be
recorded; no IP may be handed out twice; and ``ipam check`` must find the database consistent."""

from __future__ import annotations

import ipaddress
import multiprocessing
import os
import signal
import sqlite3
import time
from collections.abc import Iterator, Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event
from pathlib import Path

import pytest

from ipam.report import check
from ipam.service import AllocateRequest, IpamService
from ipam.store.sqlite import SqliteStore
from tests.service.workers import POOL, Report, allocator
from tests.service.world import World

DEADLINE = 15.0  # seconds for a whole storm; the test file stays well under 20 s
FIRST = "10.60.0.1"


@pytest.fixture
def children() -> Iterator[list[BaseProcess]]:
    """Processes this test spawned; any still alive at the end is killed (by its own PID) and reaped."""
    started: list[BaseProcess] = []
    yield started
    for proc in started:
        if proc.is_alive():
            proc.kill()
        proc.join(10)


def make_db(path: Path, groups: Sequence[tuple[str, int]]) -> list[list[tuple[str, str]]]:
    """The pool and, per group (prefix, count), that many pods; returns the (name, uid) lists."""
    store = SqliteStore(path)
    try:
        world = World(store)
        world.pool(POOL, "10.60.0.0/16", ["10.60.0.1-10.60.255.254"])
        out = []
        for prefix, count in groups:
            pods = []
            for i in range(count):
                obj = world.pod(f"{prefix}-{i}", node=f"node-{prefix}")
                pods.append((obj["metadata"]["name"], obj["metadata"]["uid"]))
            out.append(pods)
        return out
    finally:
        store.close()


def start(
    children: list[BaseProcess], path: Path, node: str, pods: list[tuple[str, str]], go: Event
) -> tuple[BaseProcess, Connection]:
    ctx = multiprocessing.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=allocator, args=(str(path), node, pods, go, sender), name=f"sbgp-{node}")
    proc.start()
    children.append(proc)
    sender.close()  # the child holds the only write end: EOF when it exits or dies
    return proc, receiver


def release_together(pipes: Sequence[Connection], go: Event) -> None:
    """Wait until every child has its store open, then let them all start at once: a real race."""
    deadline = time.monotonic() + DEADLINE
    for receiver in pipes:
        while not receiver.poll(0.05):
            assert time.monotonic() < deadline, "a child did not start"
        assert receiver.recv() is None
    go.set()


def receive(receiver: Connection, got: list[Report], deadline: float, *, until: int | None = None) -> bool:
    """Append reports until EOF (returns True) or, with ``until``, until that many arrived (False)."""
    while time.monotonic() < deadline:
        if until is not None and len(got) >= until:
            return False
        if not receiver.poll(0.05):
            continue
        try:
            got.append(receiver.recv())
        except EOFError:
            return True
    raise AssertionError(f"storm did not finish within {DEADLINE} s ({len(got)} reports)")


def assert_consistent(path: Path, reported: list[Report]) -> dict[str, tuple[str, str]]:
    """Every reported IP recorded for its pod and UID, nothing twice, ``ipam check`` clean."""
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        raw.close()
    ips = [ip for _, _, ip, _ in reported]
    assert len(ips) == len(set(ips)), "a process was handed an IP another one holds"
    store = SqliteStore(path)
    try:
        records = {r.ip: (r.pod, r.pod_uid) for r in store.records(POOL)}
        assert len(records) == len(store.records(POOL))
        for name, uid, ip, _ in reported:
            assert records.get(ip) == (f"default/{name}", uid), f"{name} was told {ip} but it is not recorded"
        report, problems = check(store)
        assert problems == 0, report
        assert store.get("SpiderIPPool", POOL)["status"]["allocatedIPCount"] == len(records)
        return records
    finally:
        store.close()


def test_processes_allocating_from_one_pool_never_share_an_ip(
    tmp_path: Path, children: list[BaseProcess]
) -> None:
    path = tmp_path / "state.db"
    groups = make_db(path, [(f"w{i}", 40) for i in range(4)])
    go = multiprocessing.get_context("spawn").Event()
    pipes = [start(children, path, f"node{i}", pods, go)[1] for i, pods in enumerate(groups)]
    release_together(pipes, go)
    deadline = time.monotonic() + DEADLINE
    reported: list[Report] = []
    for receiver in pipes:
        receive(receiver, reported, deadline)
    for proc in children:
        proc.join(5)
        assert proc.exitcode == 0

    assert len(reported) == 160
    # the processes really raced: the service met Conflicts from the others and retried them
    assert sum(conflicts for *_, conflicts in reported) > 0
    records = assert_consistent(path, reported)
    assert len(records) == 160
    # the pool was filled from the bottom without holes: lowest-free held under the race
    first = int(ipaddress.IPv4Address(FIRST))
    assert sorted(int(ipaddress.IPv4Address(ip)) for ip in records) == list(range(first, first + 160))


def test_a_process_killed_mid_storm_loses_nothing_it_reported(
    tmp_path: Path, children: list[BaseProcess]
) -> None:
    path = tmp_path / "state.db"
    victim_pods, *other_groups = make_db(path, [("victim", 400), ("a", 40), ("b", 40)])
    go = multiprocessing.get_context("spawn").Event()
    victim, victim_pipe = start(children, path, "node-victim", victim_pods, go)
    others = [start(children, path, f"node-{i}", pods, go) for i, pods in enumerate(other_groups)]
    release_together([victim_pipe, *(receiver for _, receiver in others)], go)
    deadline = time.monotonic() + DEADLINE

    from_victim: list[Report] = []
    finished = receive(victim_pipe, from_victim, deadline, until=25)
    assert not finished, "the victim finished before it could be killed"
    assert victim.pid is not None
    os.kill(victim.pid, signal.SIGKILL)
    receive(victim_pipe, from_victim, deadline)  # what it sent before dying is still in the pipe
    victim.join(5)
    assert victim.exitcode == -signal.SIGKILL

    from_others: list[Report] = []
    for _, receiver in others:
        receive(receiver, from_others, deadline)
    for proc, _ in others:
        proc.join(5)
        assert proc.exitcode == 0
    assert len(from_others) == 80

    records = assert_consistent(path, from_victim + from_others)
    victim_records = {ip for ip, (pod, _) in records.items() if pod.startswith("default/victim-")}
    reported = {ip for _, _, ip, _ in from_victim}
    assert reported <= victim_records
    assert len(victim_records - reported) <= 1  # at most the commit it was killed right after

    # the database is still usable: a new service finishes the victim's next pod
    store = SqliteStore(path)
    try:
        held = {pod.removeprefix("default/") for pod, _ in records.values()}
        name, uid = next((n, u) for n, u in victim_pods if n not in held)
        got = IpamService(store, node_name="node-victim").allocate(
            AllocateRequest("ctr-after", "eth0", "default", name, uid, default_v4_pools=(POOL,))
        )
        assert got.ips[0].ip not in records
    finally:
        store.close()
