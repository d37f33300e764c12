"""``spiderbgp delete ss NAME`` and what ``spiderbgp get sp`` shows as the leader's controllers run:
the subnet's pools terminating while they hold IPs, then gone with the subnet; a pool of another CIDR
untouched.  The CLI runs in-process (``spiderbgp.cli.main``) on a SQLite file; the controllers run on
their own store handle of the same file, as the leader agent would."""

from __future__ import annotations

import io
import json
from pathlib import Path

from ipam.controllers.leader import PoolPass
from ipam.controllers.subnet import SubnetController
from ipam.records import Claim, IPRecord
from ipam.store.sqlite import SqliteStore
from spiderbgp.cli import main

DOCS = """\
apiVersion: spiderpool.spidernet.io/v2beta1
kind: SpiderSubnet
metadata: {name: s1}
spec: {subnet: 10.0.0.0/16, ips: [10.0.1.0-10.0.1.255], gateway: 10.0.0.1}
---
apiVersion: spiderpool.spidernet.io/v2beta1
kind: SpiderIPPool
metadata: {name: busy}
spec: {subnet: 10.0.0.0/16, ips: [10.0.1.1-10.0.1.9]}
---
apiVersion: spiderpool.spidernet.io/v2beta1
kind: SpiderIPPool
metadata: {name: idle}
spec: {subnet: 10.0.0.0/16, ips: [10.0.1.10-10.0.1.19]}
---
apiVersion: spiderpool.spidernet.io/v2beta1
kind: SpiderIPPool
metadata: {name: other}
spec: {subnet: 10.9.0.0/16, ips: [10.9.0.1-10.9.0.9]}
"""


def cli(db: Path, *argv: str, stdin: str = "") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), env={"SPIDERBGP_STORE": str(db)}, out=out, err=err, stdin=io.StringIO(stdin))
    return code, out.getvalue(), err.getvalue()


def pool_names(db: Path) -> list[str]:
    code, out, _ = cli(db, "get", "sp")
    assert code == 0
    return [line.split()[0] for line in out.splitlines()[1:]]


def terminating(db: Path) -> list[str]:
    code, out, _ = cli(db, "get", "sp", "-o", "json")
    assert code == 0
    return [o["metadata"]["name"] for o in json.loads(out)["items"] if o["metadata"].get("deletionTimestamp")]


def test_delete_subnet_then_get_pools(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    assert cli(db, "apply", "-f", "-", stdin=DOCS)[0] == 0
    leader_store = SqliteStore(db)
    try:
        leader = PoolPass(leader_store, SubnetController(leader_store))
        usage = leader_store.usage("busy")
        leader_store.commit(claims=[Claim("busy", usage.resource_version, "10.0.1.1", "default/a", "uid-a")])

        code, out, err = cli(db, "delete", "ss", "s1")
        assert (code, err) == (0, "")
        assert out == (
            "spidersubnet.spiderpool.spidernet.io/s1 deleted (terminating until the 2 SpiderIPPools it owns "
            "are deleted: busy, idle; the leader's controllers delete them, each once its IPs are released)\n"
        )
        assert pool_names(db) == ["busy", "idle", "other"] and terminating(db) == []

        leader.reconcile()
        assert pool_names(db) == ["busy", "other"] and terminating(db) == ["busy"]
        assert cli(db, "get", "ss", "s1")[0] == 0  # still there, terminating

        leader_store.commit(releases=[IPRecord("busy", "10.0.1.1", "default/a", "uid-a")])
        leader.reconcile()
        assert pool_names(db) == ["other"] and terminating(db) == []
        code, out, err = cli(db, "get", "ss")
        assert (code, out, err) == (0, "", "No resources found.\n")
    finally:
        leader_store.close()


def test_delete_unknown_subnet_is_one_line(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    assert cli(db, "apply", "-f", "-", stdin=DOCS)[0] == 0
    code, out, err = cli(db, "delete", "ss", "nope")
    assert code != 0 and out == ""
    assert len(err.splitlines()) == 1 and "nope" in err
    assert pool_names(db) == ["busy", "idle", "other"]
