"""Data safety: a damaged manifest is set aside, never used to wipe records; local disk errors say
"disk", exit 8 and are not retried. Against the Range-capable fault server in tests/faultserver.py."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

A, B = "acme/alpha-GGUF", "acme/beta-GGUF"
FILE = "model-Q4_K_M.gguf"
FAST = {"INFER_RETRY_BACKOFF": "0.05", "INFER_STALL_TIMEOUT": "1"}
GARBAGE = b'{"version": 1, "models": {"acme/al\x00\xff not json at all'


def payload(size: int = 256 * 1024) -> bytes:
    from ggufs import write_gguf

    with tempfile.TemporaryDirectory() as tmp:
        head = write_gguf(Path(tmp) / "x.gguf", "safety model")
    return head + os.urandom(size)


@pytest.fixture
def hub(fault_hub, infer):
    infer.env.update(FAST, HF_ENDPOINT=fault_hub.url)
    return fault_hub


@pytest.fixture
def two(hub, infer):
    """Two models pulled: {repo: Served}."""
    served = {repo: hub.add(repo, FILE, payload()) for repo in (A, B)}
    for repo in served:
        proc = infer("pull", repo)
        assert proc.returncode == 0, proc.stderr
    assert set(listed(infer)) == {A, B}
    return served


def listed(infer) -> dict:
    proc = infer("list", "--json")
    assert proc.returncode == 0, proc.stderr
    return {m["name"]: m for m in json.loads(proc.stdout)["models"]}


def manifest(home: Path) -> Path:
    return home / "data" / "manifest.json"


def blob(store_dir: Path, repo: str, sha: str) -> Path:
    return store_dir / f"models--{repo.replace('/', '--')}" / "blobs" / sha


def set_aside(home: Path) -> list[Path]:
    return sorted(manifest(home).parent.glob("manifest.json.corrupt-*"))


def test_garbage_manifest_is_set_aside_once_and_loses_no_file(two, infer, home, store_dir):
    manifest(home).write_bytes(GARBAGE)
    first = infer("list", "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["models"] == []
    lines = first.stderr.strip().splitlines()
    assert len(lines) == 1 and "warning" in lines[0] and str(manifest(home)) in lines[0]
    [aside] = set_aside(home)
    assert aside.read_bytes() == GARBAGE and aside.name in lines[0]  # kept, byte for byte, and named
    assert not manifest(home).exists()
    again = infer("list", "--json")
    assert again.returncode == 0 and again.stderr == ""  # reported once, not on every command
    for repo, served in two.items():
        assert blob(store_dir, repo, served.sha256).exists()


def test_every_command_after_the_damage_keeps_the_files_and_records_again(two, infer, home, store_dir):
    manifest(home).write_bytes(GARBAGE)
    gone = infer("rm", "-y", B)  # the record is unreadable: nothing is removed
    assert gone.returncode == 3, gone.stderr
    assert "warning" in gone.stderr and str(manifest(home)) in gone.stderr
    assert blob(store_dir, B, two[B].sha256).exists()
    sent = {repo: s.bytes_sent for repo, s in two.items()}
    again = infer("pull", A)  # records A again from the store, downloading nothing
    assert again.returncode == 0, again.stderr
    assert two[A].bytes_sent == sent[A]
    assert set(listed(infer)) == {A}
    assert infer("pull", B).returncode == 0 and two[B].bytes_sent == sent[B]
    assert set(listed(infer)) == {A, B}
    removed = infer("rm", "-y", A)
    assert removed.returncode == 0, removed.stderr
    assert set(listed(infer)) == {B}
    assert not blob(store_dir, A, two[A].sha256).exists() and blob(store_dir, B, two[B].sha256).exists()
    assert len(set_aside(home)) == 1


def test_a_partly_damaged_manifest_keeps_the_records_it_can_read(two, infer, home):
    data = json.loads(manifest(home).read_text())
    data["models"][B]["files"] = "not a list of files"
    manifest(home).write_text(json.dumps(data))
    proc = infer("list", "--json")
    assert proc.returncode == 0
    assert [m["name"] for m in json.loads(proc.stdout)["models"]] == [A]
    assert "1 of 2" in proc.stderr and str(manifest(home)) in proc.stderr
    assert len(set_aside(home)) == 1
    pulled = infer("pull", B)  # the next write keeps A and adds B back
    assert pulled.returncode == 0, pulled.stderr
    assert set(listed(infer)) == {A, B}


def test_an_unreadable_manifest_is_a_disk_error_and_is_not_written_over(two, infer, home):
    path = manifest(home)
    path.rename(path.with_name("saved.json"))
    path.mkdir()  # reading it fails with an OSError (a directory): not "empty"
    for args in (["list"], ["pull", A], ["rm", "-y", A]):
        proc = infer(*args)
        assert proc.returncode == 8, (args, proc.stderr)
        assert "disk" in proc.stderr and str(path) in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    assert path.is_dir() and not set_aside(home)


def test_a_store_that_cannot_be_created_is_a_disk_error_not_a_network_one(hub, infer, tmp_path):
    served = hub.add(A, FILE, payload())
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    store = blocker / "store"  # mkdir fails (not a directory), for root too
    proc = infer("pull", A, env={"INFER_MODELS": str(store)})
    assert proc.returncode == 8, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "disk" in lines[0] and str(store) in lines[0]
    assert "network" not in proc.stderr and "retrying" not in proc.stderr
    assert served.bytes_sent == 0


def test_a_write_error_during_the_download_is_not_retried(hub, infer, store_dir, tmp_path):
    served = hub.add(A, FILE, payload())
    partial = blob(store_dir, A, served.sha256).with_name(served.sha256 + ".incomplete")
    partial.parent.mkdir(parents=True)
    partial.symlink_to(tmp_path / "no-such-dir" / "x")  # opening it for writing fails: a local error
    proc = infer("pull", A)
    assert proc.returncode == 8, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert "disk" in lines[-1] and str(partial) in lines[-1]
    assert "retrying" not in proc.stderr and "network" not in proc.stderr
    assert len(served.requests) == 1  # asked once, never again
    assert A not in listed(infer)


def _writable_despite_permissions(directory: Path) -> bool:
    """Root (CAP_DAC_OVERRIDE) writes anyway; run as a user, or under
    `setpriv --bounding-set -dac_override,-dac_read_search`, to exercise it."""
    probe = directory / ".probe"
    try:
        probe.write_text("")
    except OSError:
        return False
    probe.unlink()
    return True


def test_a_read_only_store_is_a_disk_error_and_keeps_its_records(two, infer, store_dir):
    dirs = [store_dir, *(p for p in store_dir.rglob("*") if p.is_dir() and not p.is_symlink())]
    for d in dirs:
        d.chmod(0o555)
    try:
        if _writable_despite_permissions(store_dir):
            pytest.skip("this user writes through read-only permissions (root): covered by the tests above")
        proc = infer("rm", "-y", A)
        assert proc.returncode == 8, proc.stderr
        assert "disk" in proc.stderr and str(store_dir) in proc.stderr
        assert set(listed(infer)) == {A, B}  # the record stays: nothing half-removed is forgotten
        again = infer("pull", A, "--force")
        assert again.returncode == 8 and "disk" in again.stderr and str(store_dir) in again.stderr
        assert "retrying" not in again.stderr and "network" not in again.stderr
    finally:
        for d in dirs:
            d.chmod(0o755)


def test_parse_manifest_keeps_good_records_and_names_the_rest():
    from infer.store import parse_manifest

    good = {"name": "a", "repo": "o/r", "quant": None, "files": [{"name": "f", "sha256": "0" * 64, "size": 1, "path": "/f"}]}
    assert parse_manifest(b"\x00garbage") == ({}, parse_manifest(b"\x00garbage")[1])
    assert parse_manifest(b"\x00garbage")[1].startswith("not valid JSON")
    assert parse_manifest("[]")[1] and parse_manifest('{"models": 3}')[1]
    models, problem = parse_manifest(json.dumps({"models": {"a": good, "b": {"files": [1]}, "c": 7}}))
    assert list(models) == ["a"] and problem == "2 of 3 record(s) cannot be read"
    assert parse_manifest(json.dumps({"models": {"a": good}})) == (models, None)
