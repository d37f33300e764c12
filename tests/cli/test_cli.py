"""``spiderbgp`` driven through ``spiderbgp.cli.main`` with its own streams: apply/get/delete with the
seed's pool (a busy pool stays terminating), Spiderpool's status format, ipam show/check/release, and
one-line errors that change nothing."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ipam.errors import AllocationError
from ipam.service import AllocateRequest, IpamService
from tests.cli.conftest import Run, open_db, snapshot
from tests.service.world import World

REPO = Path(__file__).resolve().parents[2]
SEED_FILE = REPO / "configs" / "nginx-ippool-v4.yaml"
SEED = "nginx-ippool-v4"
HEADER = ["NAME", "VERSION", "SUBNET", "ALLOCATED-IP-COUNT", "TOTAL-IP-COUNT", "DEFAULT", "DISABLE"]
SPIDER_API = "spiderpool.spidernet.io/v2beta1"


def allocate(db: Path, pod: str, pool: str = SEED) -> tuple[str, str]:
    """A pod in the store and an IP for it through the real IPAM service: (ip, pod uid)."""
    with open_db(db) as store:
        world = World(store)
        world.pod(pod)
        got = IpamService(store, node_name="node1").allocate(
            AllocateRequest("ctr-" + pod, "eth0", "default", pod, world.uid(pod), default_v4_pools=(pool,))
        )
        return got.ips[0].ip, got.pod_uid


def pool_doc(name: str, subnet: str, ips: list[str], **spec: object) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": SPIDER_API,
            "kind": "SpiderIPPool",
            "metadata": {"name": name},
            "spec": {"subnet": subnet, "ips": ips, **spec},
        }
    )


def one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def seeded(run: Run) -> None:
    result = run("apply", "-f", str(SEED_FILE))
    assert result.code == 0, result.err


def test_seed_pool_apply_then_get_sp(run: Run) -> None:
    applied = run("apply", "-f", str(SEED_FILE))
    assert (applied.code, applied.err) == (0, "")
    assert applied.lines == [f"spiderippool.spiderpool.spidernet.io/{SEED} created"]

    got = run("get", "sp")
    assert (got.code, got.err) == (0, "")
    assert [line.split() for line in got.lines] == [
        HEADER,
        [SEED, "4", "10.244.0.0/16", "0", "25602", "false", "false"],
    ]

    again = run("apply", "-f", str(SEED_FILE))
    assert again.code == 0
    assert again.lines == [f"spiderippool.spiderpool.spidernet.io/{SEED} unchanged"]


@pytest.mark.usefixtures("seeded")
def test_yaml_and_json_show_spiderpools_allocated_ips_string(run: Run, db: Path) -> None:
    ip, uid = allocate(db, "nginx-1")
    assert ip == "10.244.100.0"
    expected = {ip: {"pod": "default/nginx-1", "podUid": uid}}

    as_json = json.loads(run("get", "sp", SEED, "-o", "json").out)
    assert isinstance(as_json["status"]["allocatedIPs"], str)
    assert json.loads(as_json["status"]["allocatedIPs"]) == expected
    assert as_json["status"]["allocatedIPCount"] == 1
    assert as_json["status"]["totalIPCount"] == 25602

    as_yaml = yaml.safe_load(run("get", "sp", SEED, "-o", "yaml").out)
    assert json.loads(as_yaml["status"]["allocatedIPs"]) == expected
    assert as_yaml["spec"]["ipVersion"] == 4

    # kubectl's shape for a listing: a List even of one object
    listing = json.loads(run("get", "sp", "-o", "json").out)
    assert listing["kind"] == "List"
    assert [i["metadata"]["name"] for i in listing["items"]] == [SEED]
    assert json.loads(run("get", "sr", "-o", "json").out)["items"] == []

    row = run("get", "sp").lines[1].split()
    assert row[3] == "1"


@pytest.mark.usefixtures("seeded")
def test_short_and_long_kind_names(run: Run, db: Path) -> None:
    docs = [
        {
            "apiVersion": SPIDER_API,
            "kind": "SpiderSubnet",
            "metadata": {"name": "demo-subnet"},
            "spec": {"subnet": "10.244.0.0/16", "ips": ["10.244.100.0-10.244.200.1"]},
        },
        {
            "apiVersion": SPIDER_API,
            "kind": "SpiderReservedIP",
            "metadata": {"name": "keep-off"},
            "spec": {"ips": ["10.244.150.1"]},
        },
    ]
    applied = run("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))
    assert applied.code == 0, applied.err
    assert applied.lines == [
        "spidersubnet.spiderpool.spidernet.io/demo-subnet created",
        "spiderreservedip.spiderpool.spidernet.io/keep-off created",
    ]
    allocate(db, "nginx-1")
    names = {"sp": SEED, "ss": "demo-subnet", "sr": "keep-off", "se": "nginx-1"}
    for short, name in names.items():
        got = run("get", short)
        assert got.code == 0 and got.lines[1].split()[0] == name, (short, got)
    for alias in ("spiderippools", "spiderippool", "SpiderIPPool"):
        assert run("get", alias).lines == run("get", "sp").lines
    endpoint = run("get", "se")
    assert endpoint.lines[0].split() == ["NAME", "INTERFACE", "IPV4POOL", "IPV4", "IPV6POOL", "IPV6", "NODE"]
    assert endpoint.lines[1].split() == [
        "nginx-1",
        "eth0",
        SEED,
        "10.244.100.0/16",
        "<none>",
        "<none>",
        "node1",
    ]
    assert run("get", "sp", "-o", "name").lines == [f"spiderippool.spiderpool.spidernet.io/{SEED}"]
    assert run("get", "se", "-A", "-o", "name").lines == ["spiderendpoint.spiderpool.spidernet.io/nginx-1"]


@pytest.mark.usefixtures("seeded")
def test_get_of_a_missing_object_is_one_line(run: Run) -> None:
    got = run("get", "sp", "nope")
    assert got.code == 1 and got.out == ""
    assert one_error_line(got.err) == 'error: SpiderIPPool "nope" not found'
    unknown = run("get", "widgets")
    assert unknown.code == 1 and 'unknown resource type "widgets"' in one_error_line(unknown.err)


def test_empty_listing_says_so_on_stderr(run: Run, db: Path) -> None:
    with open_db(db):
        pass  # an existing, empty store
    got = run("get", "sp")
    assert (got.code, got.out, got.err) == (0, "", "No resources found.\n")


@pytest.mark.usefixtures("seeded")
def test_delete(run: Run) -> None:
    deleted = run("delete", "sp", SEED)
    assert (deleted.code, deleted.err) == (0, "")
    assert deleted.lines == [f"spiderippool.spiderpool.spidernet.io/{SEED} deleted"]
    assert run("get", "sp", SEED).code == 1
    again = run("delete", "sp", SEED)
    assert again.code == 1 and one_error_line(again.err) == f'error: SpiderIPPool "{SEED}" not found'


@pytest.mark.usefixtures("seeded")
def test_delete_of_a_pool_with_allocations_leaves_it_terminating_until_they_are_released(
    run: Run, db: Path
) -> None:
    """Spiderpool's way: the pool's finalizer keeps it, terminating; its pod keeps the IP, no new pod
    gets one from it, and it goes once the IP is released."""
    ip, _ = allocate(db, "nginx-1")
    deleted = run("delete", "sp", SEED)
    assert (deleted.code, deleted.err) == (0, "")
    assert deleted.lines == [
        f"spiderippool.spiderpool.spidernet.io/{SEED} deleted (terminating until its 1 allocated IPs are released)"
    ]
    shown = json.loads(run("get", "sp", SEED, "-o", "json").out)
    assert shown["metadata"]["deletionTimestamp"]
    assert shown["metadata"]["finalizers"] == ["spiderpool.spidernet.io"]
    assert json.loads(shown["status"]["allocatedIPs"])[ip]["pod"] == "default/nginx-1"
    with pytest.raises(AllocationError, match=f"{SEED}: terminating"):
        allocate(db, "nginx-2")
    again = run("delete", "sp", SEED)  # deleting a terminating pool again changes nothing
    assert again.code == 0 and again.lines == deleted.lines

    assert run("ipam", "release", "--ip", ip, "--force").code == 0
    # the agent's pool controller drops the finalizer of the now empty pool; a delete does it at once
    assert run("delete", "sp", SEED).lines == [f"spiderippool.spiderpool.spidernet.io/{SEED} deleted"]
    assert run("get", "sp").out == ""


def test_delete_of_a_busy_pool_without_finalizer_is_refused_and_changes_nothing(run: Run, db: Path) -> None:
    """A pool written past admission has no finalizer to hold it: deleting it would drop the records of
    IPs in use, so the CLI refuses in one line."""
    with open_db(db) as store:
        store.create(yaml.safe_load(SEED_FILE.read_text()))
    allocate(db, "nginx-1")
    before = snapshot(db)
    refused = run("delete", "sp", SEED)
    assert refused.code == 1 and refused.out == ""
    assert one_error_line(refused.err).startswith(
        f'error: SpiderIPPool "{SEED}": metadata.finalizers: no finalizer keeps the pool while 1 IPs are '
        "still allocated"
    )
    assert snapshot(db) == before
    assert run("apply", "-f", str(SEED_FILE)).lines == [
        f"spiderippool.spiderpool.spidernet.io/{SEED} configured"
    ]
    assert (
        run("delete", "sp", SEED)
        .lines[0]
        .endswith("deleted (terminating until its 1 allocated IPs are released)")
    )


@pytest.mark.usefixtures("seeded")
def test_ipam_show_check_and_release(run: Run, db: Path) -> None:
    ip, uid = allocate(db, "nginx-1")
    allocate(db, "nginx-2")

    table = run("ipam", "show")
    assert table.code == 0
    assert table.lines[0].split() == [
        "POOL",
        "SUBNET",
        "IPS-TOTAL",
        "RESERVED",
        "IN-USE",
        "USED",
        "FREE",
        "STATE",
    ]
    assert table.lines[1].split() == [SEED, "10.244.0.0/16", "25602", "0", "2", "0.0%", "25600"]

    shown = run("ipam", "show", "--ip", ip)
    assert shown.code == 0
    assert "State:  allocated" in shown.lines
    assert "Pod:    default/nginx-1" in shown.lines and f"PodUID: {uid}" in shown.lines
    assert "Node:   node1" in shown.lines
    free = run("ipam", "show", "--ip", "10.244.100.9")
    assert "State:  free" in free.lines
    assert run("ipam", "show", "--ip", "192.0.2.1").lines == ["192.0.2.1 is in no pool"]
    bad = run("ipam", "show", "--ip", "10.244.1.x")
    assert bad.code == 1 and "--ip" in one_error_line(bad.err)

    checked = run("ipam", "check")
    assert checked.code == 0
    assert checked.lines == ["Checked 1 pools, 2 allocations, 2 endpoints: no problems found."]

    # a live pod's IP needs --force, and the refusal writes nothing
    before = snapshot(db)
    refused = run("ipam", "release", "--ip", ip)
    assert refused.code == 1 and "--force" in one_error_line(refused.err)
    assert snapshot(db) == before
    forced = run("ipam", "release", "--ip", ip, "--force")
    assert forced.code == 0
    assert forced.lines == [f"released {ip} from pool {SEED} (was default/nginx-1)"]
    assert run("ipam", "show", "--ip", ip).lines[-1] == "State:  free"
    assert run("ipam", "release", "--ip", ip).lines == [f"{ip} is not allocated; nothing to release"]

    # a pod that vanished without a DEL: check reports the leak and fails; release needs no --force
    with open_db(db) as store:
        store.delete("Pod", "nginx-2", "default")
    leaked = run("ipam", "check")
    assert leaked.code == 1
    assert any("pod default/nginx-2 does not exist" in line for line in leaked.lines)
    assert leaked.lines[-1].endswith("1 problems found.")
    assert run("ipam", "release", "--ip", "10.244.100.1").code == 0
    assert run("ipam", "check").code == 0


def test_ipam_finds_the_pool_that_holds_an_ip_another_pool_excludes(run: Run, db: Path) -> None:
    # "alpha" lists 10.70.0.5 in spec.ips but excludes it; "beta" (listed after it) hands it out
    docs = pool_doc("alpha", "10.70.0.0/24", ["10.70.0.1-10.70.0.10"], excludeIPs=["10.70.0.5"])
    docs += "---\n" + pool_doc("beta", "10.70.0.0/24", ["10.70.0.5"])
    assert run("apply", "-f", "-", stdin=docs).code == 0
    ip, _ = allocate(db, "a", pool="beta")
    assert ip == "10.70.0.5"
    shown = run("ipam", "show", "--ip", ip)
    assert "Pool:   beta (10.70.0.0/24)" in shown.lines and "State:  allocated" in shown.lines
    released = run("ipam", "release", "--ip", ip, "--force")
    assert released.lines == [f"released {ip} from pool beta (was default/a)"]
    assert run("ipam", "show", "--ip", "10.70.0.5").lines[1] == "Pool:   beta (10.70.0.0/24)"
    assert run("ipam", "show", "--ip", "10.70.0.4").lines[1] == "Pool:   alpha (10.70.0.0/24)"


BAD_INPUTS = {
    "invalid YAML": ("spec: [unclosed\n", "line 2"),
    "not a mapping": ("- just\n- a list\n", "document 1: must be a mapping"),
    "unknown kind": (
        f"apiVersion: {SPIDER_API}\nkind: SpiderWidget\nmetadata: {{name: w}}\n",
        'kind: unknown kind "SpiderWidget"',
    ),
    "wrong apiVersion": (
        "apiVersion: spiderpool.spidernet.io/v1\nkind: SpiderIPPool\nmetadata: {name: x}\n",
        'apiVersion: SpiderIPPool needs "spiderpool.spidernet.io/v2beta1"',
    ),
    "missing name": (
        f"apiVersion: {SPIDER_API}\nkind: SpiderIPPool\nmetadata: {{labels: {{a: b}}}}\nspec: {{subnet: 10.1.0.0/16}}\n",
        "metadata.name: is required",
    ),
    "ips outside subnet": (
        pool_doc("outside", "10.1.0.0/16", ["10.2.0.5"]),
        'SpiderIPPool "outside": spec.ips',
    ),
    "overlapping pools": (
        pool_doc("overlap", "10.244.0.0/16", ["10.244.200.0-10.244.200.9"]),
        'SpiderIPPool "overlap": spec.ips',
    ),
    "overlapping subnets": (
        pool_doc("inner", "10.244.5.0/24", ["10.244.5.1"]),
        'SpiderIPPool "inner": spec.subnet',
    ),
    "removing an in-use IP": (
        pool_doc(SEED, "10.244.0.0/16", ["10.244.100.1-10.244.200.1"]),
        f'SpiderIPPool "{SEED}": spec.ips',
    ),
    "excluding an in-use IP": (
        pool_doc(SEED, "10.244.0.0/16", ["10.244.100.0-10.244.200.1"], excludeIPs=["10.244.100.0"]),
        f'SpiderIPPool "{SEED}": spec.excludeIPs',
    ),
    "changing the subnet": (
        pool_doc(SEED, "10.245.0.0/16", ["10.245.100.0-10.245.200.1"]),
        f'SpiderIPPool "{SEED}": spec.subnet',
    ),
    "a bad reserved IP": (
        f"apiVersion: {SPIDER_API}\nkind: SpiderReservedIP\nmetadata: {{name: r}}\nspec: {{ips: [10.0.0.300]}}\n",
        'SpiderReservedIP "r": spec.ips[0]',
    ),
}


@pytest.mark.usefixtures("seeded")
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_and_changes_nothing(run: Run, db: Path, case: str) -> None:
    allocate(db, "nginx-1")  # holds 10.244.100.0
    text, expected = BAD_INPUTS[case]
    before = snapshot(db)
    result = run("apply", "-f", "-", stdin=text)
    assert result.code == 1 and result.out == ""
    assert expected in one_error_line(result.err)
    assert snapshot(db) == before


SECOND_DOCUMENTS = {
    "rejected by admission": (pool_doc("bad", "10.1.0.0/16", ["10.2.0.5"]), 'SpiderIPPool "bad": spec.ips'),
    "not an object": ("kind: SpiderIPPool\n", "document 2: apiVersion"),
    "overlaps the first": (
        pool_doc("clash", "10.80.0.0/24", ["10.80.0.5"]),
        'SpiderIPPool "clash": spec.ips',
    ),
}


@pytest.mark.usefixtures("seeded")
@pytest.mark.parametrize("case", sorted(SECOND_DOCUMENTS))
def test_a_file_whose_second_document_is_invalid_writes_nothing(
    run: Run, db: Path, tmp_path: Path, case: str
) -> None:
    second, expected = SECOND_DOCUMENTS[case]
    path = tmp_path / "two.yaml"
    path.write_text(pool_doc("first", "10.80.0.0/24", ["10.80.0.1-10.80.0.9"]) + "---\n" + second)
    before = snapshot(db)
    result = run("apply", "-f", str(path))
    assert result.code == 1 and result.out == ""
    assert expected in one_error_line(result.err)
    assert snapshot(db) == before


def test_unreadable_file_is_one_line(run: Run, tmp_path: Path) -> None:
    missing = run("apply", "-f", str(tmp_path / "nope.yaml"))
    assert missing.code == 1 and "cannot read" in one_error_line(missing.err)
    binary = tmp_path / "blob"
    binary.write_bytes(b"\xff\xfe\x00binary")
    assert "not UTF-8" in one_error_line(run("apply", "-f", str(binary)).err)


def test_usage_errors_go_to_the_given_stderr(run: Run) -> None:
    result = run("get")
    assert result.code == 2 and result.out == ""
    assert "required: kind" in result.err
    assert run("--help").out.startswith("usage: spiderbgp")


def test_store_comes_from_flag_then_environment(run: Run, tmp_path: Path) -> None:
    env_db, flag_db = tmp_path / "env.db", tmp_path / "flag.db"
    env = {"SPIDERBGP_STORE": str(env_db)}
    assert run("apply", "-f", str(SEED_FILE), env=env).code == 0
    assert env_db.exists() and not flag_db.exists()
    assert run("get", "sp", env=env).lines[1].split()[0] == SEED
    assert run("--store", str(env_db), "get", "sp", env={}).lines[1].split()[0] == SEED
    # --store wins over the environment (get refuses a store that does not exist; apply creates it)
    other = run("--store", str(flag_db), "get", "sp", env=env)
    assert other.code == 1 and str(flag_db) in one_error_line(other.err)
    assert not flag_db.exists()
    assert run("--store", str(flag_db), "apply", "-f", str(SEED_FILE), env=env).code == 0
    assert run("--store", str(flag_db), "delete", "sp", SEED, env=env).code == 0
    assert run("get", "sp", env=env).lines[1].split()[0] == SEED  # untouched


def test_a_store_that_cannot_be_opened_is_one_line(run: Run, tmp_path: Path) -> None:
    not_a_db = tmp_path / "junk.db"
    not_a_db.write_bytes(b"this is not a database" * 100)
    result = run("--store", str(not_a_db), "get", "sp", env={})
    assert result.code == 1 and str(not_a_db) in one_error_line(result.err)
    applied = run("--store", str(not_a_db), "apply", "-f", str(SEED_FILE), env={})
    assert applied.code == 1 and "not an SQLite store database" in one_error_line(applied.err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.db"]  # no lock file beside it


@pytest.mark.parametrize(
    "command", [["get", "sp"], ["ipam", "show"], ["ipam", "check"], ["delete", "sp", "x"]]
)
def test_a_mistyped_store_is_refused_not_created(run: Run, tmp_path: Path, command: list[str]) -> None:
    typo = tmp_path / "no-such-dir" / "state.db"
    result = run("--store", str(typo), *command, env={})
    assert result.code == 1 and "no store database there" in one_error_line(result.err)
    assert not typo.parent.exists()


def test_store_files_are_private(run: Run, db: Path) -> None:
    assert run("apply", "-f", str(SEED_FILE)).code == 0
    files = {p.name: stat.S_IMODE(p.stat().st_mode) for p in db.parent.iterdir()}
    assert set(files) >= {"state.db", "state.db.lock"}
    assert files == dict.fromkeys(files, 0o600)


def test_an_existing_world_readable_store_becomes_private(run: Run, db: Path) -> None:
    assert run("apply", "-f", str(SEED_FILE)).code == 0
    for p in db.parent.iterdir():
        p.chmod(0o644)
    assert run("get", "sp").code == 0
    assert {stat.S_IMODE(p.stat().st_mode) for p in db.parent.iterdir()} == {0o600}


def test_install_cni_writes_an_executable_plugin(run: Run, tmp_path: Path) -> None:
    target = tmp_path / "opt" / "cni" / "bin"
    result = run("install-cni", "--dir", str(target))
    assert result.code == 0, result.err
    plugin = target / "spiderpool"
    assert result.lines == [f"installed {plugin}"]
    # isolated (-I) and no site (-S), written as ONE option word: Linux hands everything after the
    # interpreter to it as a single argument, and python rejects "-I -S" ("Unknown option: - ")
    assert plugin.read_text().splitlines()[0] == f"#!{sys.executable} -IS"
    assert plugin.stat().st_mode & stat.S_IXUSR
    assert [p.name for p in target.iterdir()] == ["spiderpool"]  # no temporary file left behind
    version = subprocess.run(
        [str(plugin)],
        env={"CNI_COMMAND": "VERSION", "PATH": os.environ.get("PATH", "")},
        input='{"cniVersion": "1.0.0"}',
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    assert "1.1.0" in json.loads(version.stdout)["supportedVersions"]

    other = run("install-cni", "--dir", str(target), "--python", "/usr/bin/python3")
    assert other.code == 0
    assert plugin.read_text().splitlines()[0] == "#!/usr/bin/python3 -IS"

    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    failed = run("install-cni", "--dir", str(blocked))
    assert failed.code == 1 and str(blocked) in one_error_line(failed.err)


@pytest.mark.usefixtures("seeded")
def test_ipam_show_counts_an_allocated_ip_reserved_later_once(run: Run, db: Path) -> None:
    ip, _ = allocate(db, "nginx-1")
    reserve = f"apiVersion: {SPIDER_API}\nkind: SpiderReservedIP\nmetadata: {{name: r}}\nspec: {{ips: [{ip}, 10.244.100.7]}}\n"
    assert run("apply", "-f", "-", stdin=reserve).code == 0
    row = run("ipam", "show").lines[1].split()
    # 25602 usable, 2 reserved, 1 in use (and reserved): 25600 can still be handed out
    assert row[2:5] == ["25602", "2", "1"] and row[6] == "25600"
