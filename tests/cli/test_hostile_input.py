"""Hostile files and stores given to the CLI (issue 12): a rejected ``apply`` writes nothing, one file
is one transaction, YAML alias bombs and deep nesting are refused fast, and the API server's object
limits hold, each as one line naming the object and the field."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import yaml

from ipam.admin import apply_documents
from ipam.errors import Invalid
from tests.cli.conftest import Run, open_db, snapshot

SPIDER_API = "spiderpool.spidernet.io/v2beta1"


def pool(name: str, subnet: str, ips: list[str], **meta: object) -> dict[str, object]:
    return {
        "apiVersion": SPIDER_API,
        "kind": "SpiderIPPool",
        "metadata": {"name": name, **meta},
        "spec": {"subnet": subnet, "ips": ips},
    }


def namespace(name: str, **meta: object) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, **meta}}


def pod(name: str, **meta: object) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", **meta},
        "spec": {"nodeName": "node1"},
    }


def one_error(result_err: str) -> str:
    lines = result_err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result_err, result_err
    return lines[0]


def applied(run: Run, *docs: object) -> tuple[int, str, str]:
    got = run("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))
    return got.code, got.out, got.err


@pytest.fixture
def base(run: Run, db: Path) -> dict[str, object]:
    """A store holding one pool; returns its snapshot."""
    assert applied(run, pool("base", "10.9.0.0/24", ["10.9.0.10-10.9.0.20"]))[0] == 0
    return snapshot(db)


def test_the_same_object_twice_is_checked_against_itself(run: Run, db: Path, base: object) -> None:
    code, out, err = applied(
        run,
        pool("twice", "10.50.0.0/24", ["10.50.0.10"]),
        pool("twice", "10.51.0.0/24", ["10.51.0.10"]),
    )
    assert (code, out) == (1, "")
    assert 'SpiderIPPool "twice": spec.subnet: is not changeable' in one_error(err)
    assert snapshot(db) == base


def test_a_bad_later_document_of_another_kind_writes_nothing(run: Run, db: Path, base: object) -> None:
    code, out, err = applied(run, pool("first", "10.50.0.0/24", ["10.50.0.10"]), pod("p", labels=["x"]))
    assert (code, out) == (1, "")
    assert 'Pod "p": metadata.labels: must be a map of strings' in one_error(err)
    assert snapshot(db) == base


def test_a_document_overlapping_an_earlier_one_writes_nothing(run: Run, db: Path, base: object) -> None:
    code, _, err = applied(
        run,
        pool("a", "10.50.0.0/24", ["10.50.0.10-10.50.0.20"]),
        pool("b", "10.50.0.0/24", ["10.50.0.15"]),
    )
    assert code == 1 and 'SpiderIPPool "b": spec.ips: overlaps with SpiderIPPool a' in one_error(err)
    assert snapshot(db) == base


def test_one_file_is_one_commit(run: Run, db: Path) -> None:
    """A reader on another connection sees none of the file's objects or all of them, never a part
    (before, each document committed alone, and a SIGKILL left a part of a big file)."""
    with open_db(db):
        pass
    count = 300
    docs = [namespace(f"ns-{i}") for i in range(count)]
    seen: set[int] = set()
    done = threading.Event()

    def watch() -> None:
        with open_db(db) as reader:
            while not done.is_set():
                seen.add(len(reader.list("Namespace")))
            seen.add(len(reader.list("Namespace")))

    thread = threading.Thread(target=watch)
    thread.start()
    try:
        code, out, _ = applied(run, *docs)
    finally:
        done.set()
        thread.join()
    assert code == 0 and len(out.splitlines()) == count
    assert seen <= {0, count} and count in seen


BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{n}: &{n} [{','.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)
)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (BOMB, "aliases expand to more than 10000 nodes"),
        ("[" * 100_000, "nested deeper than 100 levels"),
        ("".join(" " * i + f"k{i}:\n" for i in range(5000)), "nested deeper than 100 levels"),
    ],
    ids=["billion-laughs", "100000-brackets", "5000-mappings"],
)
def test_yaml_bombs_are_refused_fast(run: Run, db: Path, text: str, problem: str) -> None:
    """Refused while composing, before anything is built (before: 24 s, then MemoryError; or
    RecursionError), so the line names the limit and where the file crossed it."""
    got = run("apply", "-f", "-", stdin=text)
    line = one_error(got.err)
    assert got.code == 1 and line.startswith("error: <stdin>: line ") and problem in line
    assert not db.exists()


def test_small_aliases_still_work(run: Run) -> None:
    text = (
        "apiVersion: v1\nkind: List\nitems:\n"
        "- {apiVersion: v1, kind: Namespace, metadata: {name: a, labels: &l {team: x, tier: web}}}\n"
        "- {apiVersion: v1, kind: Namespace, metadata: {name: b, labels: *l}}\n"
    )
    got = run("apply", "-f", "-", stdin=text)
    assert got.code == 0, got.err
    assert run("get", "ns", "-l", "team=x", "-o", "name").lines == ["namespace/a", "namespace/b"]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (pool("big", "10.50.0.0/24", ["10.50.0.10"], labels={"k": "v" * 64}), "metadata.labels.k: "),
        (pool("big", "10.50.0.0/24", ["10.50.0.10"], labels={"a b": "v"}), "metadata.labels: key 'a b'"),
        (pool("big", "10.50.0.0/24", ["10.50.0.10"], labels={"Bad_/x": "v"}), "the prefix must be"),
        (
            pool("big", "10.50.0.0/24", ["10.50.0.10"], annotations={"k": "x" * (256 * 1024)}),
            "metadata.annotations: may not be more than 256 KiB",
        ),
        (pod("p", annotations={"k": 1}), 'Pod "p": metadata.annotations.k: must be a string'),
        (namespace("nul\0x"), "metadata.name: 'nul\\x00x' must be a DNS-1123 label"),
        (namespace("a.b"), "metadata.name: 'a.b' must be a DNS-1123 label"),
        (namespace("n" * 64), "must be a DNS-1123 label"),
        (pod("Upper"), "metadata.name: 'Upper' must be a DNS-1123 subdomain"),
        (pod("p", ownerReferences="x"), 'Pod "p": metadata.ownerReferences: must be a list, not str'),
        (
            pod("p", ownerReferences=[{"kind": "ReplicaSet"}]),
            "metadata.ownerReferences[0].apiVersion: is required",
        ),
        (
            pod(
                "p",
                ownerReferences=[
                    {"apiVersion": "v1", "kind": "K", "name": n, "uid": n, "controller": True} for n in "ab"
                ],
            ),
            "metadata.ownerReferences: only one reference can have controller set to true",
        ),
        (
            pool("x" * 300, "10.50.0.0/24", ["10.50.0.10"]),
            "... (300 characters) must be a DNS-1123 subdomain",
        ),
    ],
    ids=[
        "label-value-64",
        "label-key-space",
        "label-prefix",
        "annotations-256k",
        "annotation-not-string",
        "namespace-nul",
        "namespace-dot",
        "namespace-64",
        "pod-upper",
        "owners-not-a-list",
        "owner-without-apiversion",
        "two-controllers",
        "name-300",
    ],
)
def test_kubernetes_object_limits(
    run: Run, db: Path, base: object, doc: dict[str, object], message: str
) -> None:
    code, out, err = applied(run, doc)
    assert (code, out) == (1, "")
    line = one_error(err)
    assert message in line and len(line) < 400, line
    assert snapshot(db) == base


def test_the_store_itself_refuses_a_50mb_label(db: Path, base: object) -> None:
    """Writers that bypass apply (the lab's kubelet, controllers) meet the same limits in the store."""
    with open_db(db) as store:
        with pytest.raises(Invalid) as caught:
            store.create(pod("p", labels={"k": "v" * (50 * 1024 * 1024)}))
        assert "metadata.labels.k: 'vvvv" in str(caught.value) and "(52428800 characters)" in str(
            caught.value
        )
        with pytest.raises(Invalid, match=r"object: is \d+ bytes as JSON"):
            store.create({**pod("q"), "spec": {"x": "y" * (1536 * 1024)}})
        with pytest.raises(Invalid, match="must be a DNS-1123 label"):
            store.create(namespace("nul\0x"))
    assert snapshot(db) == base


def test_bgp_status_takes_the_node_name_from_the_environment_as_the_agent_does(
    run: Run, tmp_path: Path
) -> None:
    """A config without nodeName is valid when $SPIDERBGP_NODE_NAME names the node (the DaemonSet
    sets it); ``bgp status --config`` reads only its socketPath."""
    sock = tmp_path / "agent.sock"
    config = tmp_path / "agent.yaml"
    config.write_text(f"socketPath: {sock}\n")
    got = run("bgp", "status", "--config", str(config), env={"SPIDERBGP_NODE_NAME": "node1"})
    assert got.code == 1 and str(sock) in one_error(got.err)  # no agent there, and the line says where
    got = run("bgp", "status", "--config", str(config), env={})
    assert got.code == 1 and "nodeName: is required" in one_error(got.err)


def test_a_fifo_as_store_is_refused_without_hanging(run: Run, tmp_path: Path) -> None:
    fifo = tmp_path / "state.db"
    os.mkfifo(fifo)
    for command in (["get", "sp"], ["apply", "-f", "-"]):
        got = run("--store", str(fifo), *command, env={}, stdin=yaml.safe_dump(namespace("a")))
        assert got.code == 1 and "is not a regular file" in one_error(got.err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.db"]  # no lock file beside it


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("spec: {x: .nan}", "object: is not JSON-serializable: Out of range float values"),
        ("spec: {x: .inf}", "object: is not JSON-serializable: Out of range float values"),
        ("spec: {x: 2020-01-01}", "object: is not JSON-serializable: Object of type date"),
        ("spec: {x: !!binary aGVsbG8=}", "object: is not JSON-serializable: Object of type bytes"),
    ],
)
def test_values_json_cannot_hold_are_refused(
    run: Run, db: Path, base: object, text: str, message: str
) -> None:
    got = run("apply", "-f", "-", stdin=f"apiVersion: v1\nkind: Pod\nmetadata: {{name: a}}\n{text}\n")
    assert got.code == 1 and f'Pod "a": {message}' in one_error(got.err)
    assert snapshot(db) == base


def test_an_object_over_1_5_mib_is_refused_by_apply(db: Path, base: object) -> None:
    """(Through apply_documents, not the CLI: parsing 1.5 MiB of YAML only costs the test seconds.)"""
    big = {**pool("big", "10.50.0.0/24", ["10.50.0.10"]), "extra": "x" * (1536 * 1024)}
    with open_db(db) as store, pytest.raises(Invalid) as err:
        apply_documents(store, [big], transaction=store.batch)
    assert str(err.value).startswith('SpiderIPPool "big": object: is 1573025 bytes as JSON; the API server')
    assert snapshot(db) == base
