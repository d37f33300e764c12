"""Stopping an agent in the middle of a burst of ADDs from plugin processes: SIGTERM (graceful: every
answered ADD recorded, nothing recorded unanswered, socket removed, exit 0) and SIGKILL (after a
restart: no IP twice, every reported IP recorded, the database opens cleanly, ADDs resume)."""

from __future__ import annotations

import contextlib
import re
import signal
import sqlite3
import subprocess
import threading
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.agent.conftest import (
    POOL,
    AgentFactory,
    AgentProcess,
    Plugin,
    Result,
    added_ip,
    cli,
    eventually,
    read_store,
    seed,
)

PODS = 48
WORKERS = 8
TRY_AGAIN = 11  # the plugin's code when the agent is unreachable or went away mid-request


def storm(
    plugin: Plugin, agent: AgentProcess, uids: dict[str, str], *, stop_after: int, sig: signal.Signals
) -> dict[str, Result]:
    """ADD every pod from WORKERS parallel plugin processes; once ``stop_after`` ADDs have succeeded,
    send ``sig`` to the agent while the rest are still running or queued.  Returns pod -> result."""
    successes = 0
    lock = threading.Lock()
    signalled = threading.Event()

    def one(pod: str) -> Result:
        nonlocal successes
        res = plugin.add(agent.socket_path, pod, uids[pod])
        with lock:
            successes += res.rc == 0
            if successes >= stop_after and not signalled.is_set():
                signalled.set()
                agent.signal(sig)
        return res

    with ThreadPoolExecutor(WORKERS) as pool:
        futures: dict[str, Future[Result]] = {pod: pool.submit(one, pod) for pod in uids}
        results = {pod: f.result() for pod, f in futures.items()}
    assert signalled.is_set(), "the burst ended before the agent was signalled"
    return results


def split(results: dict[str, Result], *, killed: bool = False) -> tuple[dict[str, str], list[str]]:
    """(pod -> IP of every success, pods whose ADD failed); every failure is 'try again later', also
    when the agent died after reading a request (``killed`` is kept for the callers' clarity)."""
    ok = {pod: added_ip(r) for pod, r in results.items() if r.rc == 0}
    failed = [pod for pod, r in results.items() if r.rc != 0]
    for pod in failed:
        res = results[pod]
        assert "Traceback" not in res.stdout + res.stderr, res
        assert res.json["code"] == TRY_AGAIN, (pod, res)
    return ok, failed


def recorded(db: Path) -> dict[str, str]:
    """pod name -> IP of every record; fails if an IP or a pod appears twice."""
    records, pool = read_store(db)
    ips = Counter(r.ip for r in records)
    assert all(n == 1 for n in ips.values()), f"IP allocated twice: {[ip for ip, n in ips.items() if n > 1]}"
    pods = Counter(r.pod for r in records)
    assert all(n == 1 for n in pods.values()), f"pod holds two IPs: {pods}"
    assert pool["status"]["allocatedIPCount"] == len(records)
    return {r.pod.partition("/")[2]: r.ip for r in records}


@pytest.mark.slow
def test_sigterm_during_add_burst(db: Path, agents: AgentFactory, plugin: Plugin) -> None:
    uids = seed(db, [(f"burst-{i:02d}", "node1") for i in range(PODS)])
    agent = agents("node1")

    results = storm(plugin, agent, uids, stop_after=PODS // 4, sig=signal.SIGTERM)
    assert agent.wait(30) == 0, agent.log()
    assert not agent.socket_path.exists(), "SIGTERM must remove the socket file"
    log = agent.log()
    assert "Traceback" not in log and "stopped" in log

    ok, failed = split(results)
    print(f"SIGTERM: {len(ok)} answered, {len(failed)} refused")
    assert len(ok) >= PODS // 4
    # graceful: the answered ADDs are exactly the recorded ones (an in-flight ADD finished and was
    # answered; one the agent never accepted left nothing behind)
    assert recorded(db) == ok
    check = cli(db, "ipam", "check")
    assert check.rc == 0, check.stdout

    # the pods that were refused succeed once the agent is back; the others keep their IPs
    restarted = agents("node1")
    for pod in failed:
        assert plugin.add(restarted.socket_path, pod, uids[pod]).rc == 0
    for pod in list(ok)[:5]:
        assert added_ip(plugin.add(restarted.socket_path, pod, uids[pod])) == ok[pod]
    final = recorded(db)
    assert len(final) == PODS and {pod: final[pod] for pod in ok} == ok
    assert cli(db, "ipam", "check").rc == 0


@pytest.mark.slow
def test_sigkill_during_add_storm(db: Path, agents: AgentFactory, plugin: Plugin) -> None:
    uids = seed(db, [(f"storm-{i:02d}", "node1") for i in range(PODS)])
    agent = agents("node1")

    results = storm(plugin, agent, uids, stop_after=PODS // 3, sig=signal.SIGKILL)
    assert agent.wait(10) == -signal.SIGKILL
    assert agent.socket_path.is_socket(), "SIGKILL leaves the socket file: the restart must cope"
    ok, failed = split(results, killed=True)
    print(f"SIGKILL: {len(ok)} answered, {len(failed)} failed")

    # the database opens cleanly: SQLite's own integrity check and the store
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        conn.close()
    after_crash = recorded(db)
    # every IP a plugin was told is recorded for that pod; a commit whose answer was lost to the
    # kill may be recorded too (the pod exists, so ipam check is still clean)
    assert {pod: after_crash.get(pod) for pod in ok} == ok
    assert set(after_crash) - set(ok) <= set(failed)
    check = cli(db, "ipam", "check")
    assert check.rc == 0, check.stdout

    # restarted over the stale socket: the runtime's retries succeed, and a pod whose IP was
    # committed but never reported gets that same IP (no second address)
    restarted = agents("node1")
    for pod in failed:
        ip = added_ip(plugin.add(restarted.socket_path, pod, uids[pod]))
        if pod in after_crash:
            assert ip == after_crash[pod]
    final = recorded(db)
    assert len(final) == PODS
    assert {pod: final[pod] for pod in ok} == ok
    assert cli(db, "ipam", "check").rc == 0
    _, pool = read_store(db)
    assert pool["status"]["allocatedIPCount"] == PODS
    row = cli(db, "get", "sp").stdout.splitlines()[1].split()
    assert (row[0], row[3]) == (POOL, str(PODS))


def request_held(agent: AgentProcess) -> bool:
    """The agent holds a request it has read and not answered: on a connection to its socket the
    agent's receive queue is empty while the plugin at the other end is blocked waiting for the answer
    (it polls only once it has sent the whole request)."""
    out = subprocess.run(["ss", "-xnpH", "state", "established"], capture_output=True, text=True, check=True)
    rows = [ln.split() for ln in out.stdout.splitlines()]
    by_inode = {r[4]: r for r in rows if len(r) > 7}
    for row in rows:
        if len(row) > 7 and row[3] == str(agent.socket_path) and row[1] == "0" and row[6] in by_inode:
            pid = re.search(r"pid=(\d+)", " ".join(by_inode[row[6]][7:]))
            with contextlib.suppress(OSError):
                # reading, or polling to read (the plugin reads with a timeout)
                if pid and re.search(r"unix_stream_read|poll", Path(f"/proc/{pid[1]}/wchan").read_text()):
                    return True
    return False


def test_plugin_says_try_again_when_the_agent_dies_mid_request(
    db: Path, agents: AgentFactory, plugin: Plugin
) -> None:
    """The real agent is killed (SIGKILL) while it holds an ADD (another process holds SQLite's write
    lock, so the ADD waits inside the agent): the plugin says 'try again later', and nothing is
    recorded for the pod."""
    uids = seed(db, [("cut", "node1")])
    agent = agents("node1")
    blocker = sqlite3.connect(db, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(plugin.add, agent.socket_path, "cut", uids["cut"])
            eventually(lambda: request_held(agent), 20, "the agent holding the ADD")
            assert not in_flight.done(), "the ADD should be waiting for the write lock"
            agent.signal(signal.SIGKILL)
            assert agent.wait(10) == -signal.SIGKILL
            res = in_flight.result(timeout=20)
        blocker.execute("ROLLBACK")
    finally:
        blocker.close()
    assert res.rc != 0 and "Traceback" not in res.stdout + res.stderr
    assert res.json["code"] == TRY_AGAIN, res.json
    assert recorded(db) == {}


def test_sigterm_lets_an_in_flight_add_finish(db: Path, agents: AgentFactory, plugin: Plugin) -> None:
    """An ADD held inside the agent (another process holds SQLite's write lock) when SIGTERM arrives:
    the agent stops accepting at once, but waits for that ADD, answers it, records it, then exits 0."""
    uids = seed(db, [("slow", "node1"), ("late", "node1")])
    agent = agents("node1")
    blocker = sqlite3.connect(db, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # the write lock: the agent's commit waits (busy timeout)
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(plugin.add, agent.socket_path, "slow", uids["slow"])
            eventually(lambda: request_held(agent), 20, "the agent holding the ADD")
            assert not in_flight.done(), "the ADD should be waiting for the write lock"
            agent.signal(signal.SIGTERM)
            eventually(
                lambda: "stopping: finishing in-flight CNI requests" in agent.log(), 20, "SIGTERM seen"
            )
            assert agent.proc is not None and agent.proc.poll() is None, "exited with an ADD in flight"
            late = plugin.add(agent.socket_path, "late", uids["late"])
            assert late.rc != 0 and late.json["code"] == TRY_AGAIN, late
            blocker.execute("ROLLBACK")
            answered = in_flight.result(timeout=20)
    finally:
        blocker.close()
    assert agent.wait(20) == 0, agent.log()
    assert added_ip(answered) == "10.244.100.10"
    assert recorded(db) == {"slow": "10.244.100.10"}
    assert not agent.socket_path.exists()
