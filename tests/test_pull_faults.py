"""`infer pull` under faults, against the Range-capable fault server in tests/faultserver.py."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from faultserver import COMMIT

REPO = "acme/fault-GGUF"
NAME = "fault-Q4_K_M.gguf"
FAST = {"INFER_RETRY_BACKOFF": "0.05", "INFER_STALL_TIMEOUT": "1"}


def payload(size: int = 3 * 1024 * 1024 + 123) -> bytes:
    from ggufs import write_gguf
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        head = write_gguf(Path(tmp) / "x.gguf", "fault model")
    return head + os.urandom(size)  # a valid GGUF header, then bulk


@pytest.fixture
def hub(fault_hub, infer):
    infer.env.update(FAST, HF_ENDPOINT=fault_hub.url)
    return fault_hub


def blob(store_dir: Path, sha: str) -> Path:
    return store_dir / f"models--{REPO.replace('/', '--')}" / "blobs" / sha


def listed(infer) -> dict:
    return {m["name"]: m for m in json.loads(infer("list", "--json").stdout)["models"]}


def test_pull_writes_the_hf_cache_layout_and_manifest(hub, infer, store_dir):
    served = hub.add(REPO, NAME, payload())
    proc = infer("pull", REPO)
    assert proc.returncode == 0, proc.stderr
    snap = store_dir / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT / NAME
    assert snap.is_symlink() and snap.resolve() == blob(store_dir, served.sha256).resolve()
    assert (store_dir / f"models--{REPO.replace('/', '--')}" / "refs" / "main").read_text() == COMMIT
    entry = listed(infer)[REPO]
    assert entry["size"] == len(served.data) and entry["quant"] == "Q4_K_M"
    # huggingface_hub itself finds the file in the shared cache, offline
    from huggingface_hub import hf_hub_download

    found = hf_hub_download(REPO, NAME, cache_dir=str(store_dir), local_files_only=True)
    assert Path(found).read_bytes() == served.data
    # pulled again: instant, nothing fetched
    before = served.bytes_sent
    again = infer("pull", REPO)
    assert again.returncode == 0 and "already pulled" in again.stderr
    assert served.bytes_sent == before


def test_kill_9_then_pull_again_resumes(hub, infer, store_dir):
    data = payload(6 * 1024 * 1024)
    served = hub.add(REPO, NAME, data, throttle=0.02)  # ~3 MB/s: time to kill it mid-file
    p = infer.popen("pull", REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    partial = blob(store_dir, served.sha256).with_name(served.sha256 + ".incomplete")
    deadline = time.time() + 60
    while time.time() < deadline and not (partial.exists() and partial.stat().st_size > 1024 * 1024):
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait(10)
    kept = partial.stat().st_size
    assert 0 < kept < len(data)
    served.faults.throttle = 0
    proc = infer("pull", REPO)
    assert proc.returncode == 0, proc.stderr
    assert served.requests[-1] == f"bytes={kept}-"
    assert served.sent[-1] == len(data) - kept  # only the missing tail came over the wire
    assert hashlib.sha256(blob(store_dir, served.sha256).read_bytes()).hexdigest() == served.sha256
    assert not partial.exists()


def test_connection_cut_mid_stream_is_retried_and_resumed(hub, infer, store_dir):
    served = hub.add(REPO, NAME, payload(), cut_after=1024 * 1024)
    proc = infer("pull", REPO)
    assert proc.returncode == 0, proc.stderr
    assert "retrying" in proc.stderr
    assert served.requests[0] == "" and served.requests[1].startswith("bytes=")
    assert served.bytes_sent == len(served.data)  # nothing was fetched twice


def test_5xx_then_success(hub, infer):
    hub.add(REPO, NAME, payload(), errors=2, status=503)
    proc = infer("pull", REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("retrying") == 2


def test_5xx_forever_fails_with_network_exit_and_keeps_partial(hub, infer, store_dir):
    served = hub.add(REPO, NAME, payload(), cut_after=512 * 1024, errors_after_cut=100, status=500)
    proc = infer("pull", REPO, env={"INFER_RETRY_BACKOFF": "0.01"})
    assert proc.returncode == 6, proc.stderr
    assert "resumes" in proc.stderr.strip().splitlines()[-1]
    partial = blob(store_dir, served.sha256).with_name(served.sha256 + ".incomplete")
    assert partial.exists() and partial.stat().st_size == 512 * 1024
    assert REPO not in listed(infer)


def test_stalled_transfer_is_dropped_and_resumed(hub, infer):
    served = hub.add(REPO, NAME, payload(), stall_after=700_000, stall_seconds=20)
    proc = infer("pull", REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "stalled" in proc.stderr
    assert served.requests[1] == "bytes=700000-"


def test_wrong_bytes_fail_the_checksum_and_nothing_is_kept(hub, infer, store_dir):
    served = hub.add(REPO, NAME, payload(), corrupt=True)
    proc = infer("pull", REPO)
    assert proc.returncode == 7, proc.stderr
    assert "sha256 mismatch" in proc.stderr and "deleted" in proc.stderr
    repo_dir = store_dir / f"models--{REPO.replace('/', '--')}"
    assert not blob(store_dir, served.sha256).exists()
    assert not list(repo_dir.rglob("*.incomplete"))
    assert not list(repo_dir.rglob("*.gguf"))
    assert REPO not in listed(infer)


def test_server_down_fails_fast_without_retries(infer):
    proc = infer("pull", REPO, env={"HF_ENDPOINT": "http://127.0.0.1:9"}, timeout=30)
    assert proc.returncode == 6
    assert "cannot reach" in proc.stderr and "retrying" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_gated_repo_says_how_to_get_access(hub, infer):
    hub.add(REPO, NAME, payload(100))
    hub.state.status_for_repo[REPO] = 403
    proc = infer("pull", REPO)
    assert proc.returncode == 9, proc.stderr
    assert "HF_TOKEN" in proc.stderr


def test_path_traversal_in_listing_is_refused(hub, infer, tmp_path, store_dir):
    hub.add(REPO, NAME, payload(100))
    hub.state.extra_listing[REPO] = [{"type": "file", "oid": "0" * 40, "size": 10, "path": "../../evil.gguf",
                                      "lfs": {"oid": "a" * 64, "size": 10, "pointerSize": 100}}]
    proc = infer("pull", REPO)
    assert proc.returncode != 0
    assert "unsafe file name" in proc.stderr
    assert not list(tmp_path.rglob("evil.gguf"))
    assert not (store_dir / f"models--{REPO.replace('/', '--')}").exists()


def test_not_enough_disk_space_is_refused_before_downloading(hub, infer):
    served = hub.add(REPO, NAME, payload())
    proc = infer("pull", REPO, env={"INFER_TEST_FREE_BYTES": "1000000"})
    assert proc.returncode == 8, proc.stderr
    assert "not enough disk space" in proc.stderr
    assert served.bytes_sent == 0


def test_two_concurrent_pulls_make_one_good_file(hub, infer, store_dir):
    served = hub.add(REPO, NAME, payload(4 * 1024 * 1024), throttle=0.005)
    procs = [infer.popen("pull", REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(2)]
    for p in procs:
        p.wait(120)
        assert p.returncode == 0, p.stderr.read()
    assert served.bytes_sent == len(served.data)  # the second waited for the first, then found it done
    assert hashlib.sha256(blob(store_dir, served.sha256).read_bytes()).hexdigest() == served.sha256


def test_force_fetches_again(hub, infer):
    served = hub.add(REPO, NAME, payload(200_000))
    assert infer("pull", REPO).returncode == 0
    assert infer("pull", REPO, "--force").returncode == 0
    assert served.bytes_sent == 2 * len(served.data)


def test_ctrl_c_keeps_the_partial_file_for_the_next_pull(hub, infer, store_dir):
    served = hub.add(REPO, NAME, payload(6 * 1024 * 1024), throttle=0.02)
    p = infer.popen("pull", REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    partial = blob(store_dir, served.sha256).with_name(served.sha256 + ".incomplete")
    deadline = time.time() + 60
    while time.time() < deadline and not (partial.exists() and partial.stat().st_size > 512 * 1024):
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 130, err
    assert partial.exists()
    served.faults.throttle = 0
    assert infer("pull", REPO).returncode == 0
    assert served.requests[-1].startswith("bytes=")


def test_split_model_pulls_every_part_and_never_the_projector(hub, infer):
    from ggufs import write_gguf
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for part in (1, 2, 3):
            hub.add(REPO, f"big-Q4_K_M-0000{part}-of-00003.gguf",
                    write_gguf(Path(tmp) / f"p{part}.gguf", f"part {part}", split=(part, 3)))
        proj = hub.add(REPO, "mmproj-big-f16.gguf", write_gguf(Path(tmp) / "proj.gguf", "projector"))
    proc = infer("pull", REPO)
    assert proc.returncode == 0, proc.stderr
    entry = json.loads(infer("list", "--json").stdout)["models"][0]
    assert entry["path"].endswith("big-Q4_K_M-00001-of-00003.gguf")
    assert proj.bytes_sent == 0
    proc = infer("pull", REPO, "--mmproj", "--force")  # the option is gone until something uses a projector
    assert proc.returncode == 2 and "--mmproj" in proc.stderr
    assert proj.bytes_sent == 0


def test_offline_pull_is_refused(hub, infer):
    hub.add(REPO, NAME, payload(100))
    proc = infer("pull", REPO, env={"INFER_OFFLINE": "1"})
    assert proc.returncode == 6 and "offline" in proc.stderr
