"""The loopback Hub: olah (a real Hugging Face mirror) serving git repositories built here."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ggufs import write_gguf
from infer.store import sha256_file


@dataclass
class HubRepo:
    repo: str
    files: dict[str, str] = field(default_factory=dict)  # name -> sha256


def make_repo(mirrors: Path, repo: str, files: dict[str, bytes | Path]) -> HubRepo:
    """A git repository in the Hub's shape: LFS pointer files committed, objects under .git/lfs/objects."""
    root = mirrors / "models" / repo
    subprocess.run(["git", "init", "-q", "-b", "main", str(root)], check=True)
    (root / ".gitattributes").write_text("*.gguf filter=lfs diff=lfs merge=lfs -text\n")
    (root / "README.md").write_text(f"# {repo}\n")
    out = HubRepo(repo)
    for name, content in files.items():
        if isinstance(content, Path):
            sha, size = sha256_file(content), content.stat().st_size
        else:
            sha, size = hashlib.sha256(content).hexdigest(), len(content)
        obj = root / ".git" / "lfs" / "objects" / sha[:2] / sha[2:4] / sha
        obj.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            try:
                os.link(content, obj)
            except OSError:
                import shutil

                shutil.copyfile(content, obj)
        else:
            obj.write_bytes(content)
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {size}\n")
        out.files[name] = sha
    subprocess.run(["git", "-C", str(root), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(root), "-c", "user.name=test", "-c", "user.email=test@example.invalid",
                    "commit", "-qm", "add models"], check=True)
    return out


def tiny_repo_files(tmp: Path) -> dict[str, bytes]:
    files = {}
    for quant in ("Q4_K_M", "Q8_0", "Q5_K_M"):
        files[f"tiny-{quant}.gguf"] = write_gguf(tmp / f"tiny-{quant}.gguf", f"tiny {quant}")
    for part in (1, 2):
        name = f"tiny-split-Q6_K-0000{part}-of-00002.gguf"
        files[f"split/{name}"] = write_gguf(tmp / name, f"tiny split {part}", split=(part, 2))
    files["mmproj-tiny-f16.gguf"] = write_gguf(tmp / "mmproj.gguf", "projector")
    return files


class Olah:
    def __init__(self, root: Path, port: int):
        self.root, self.port = root, port
        self.url = f"http://127.0.0.1:{port}"
        config = root / "olah.toml"
        config.write_text(
            f'[basic]\nhost = "127.0.0.1"\nport = {port}\nmirrors-path = ["{root / "mirrors"}"]\n'
            f'repos-path = "{root / "cache"}"\n[accessibility]\noffline = true\n')
        self.log = open(root / "olah.log", "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "olah.server", "-c", str(config)], cwd=root,
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def wait(self, repo: str, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"olah exited: {(self.root / 'olah.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/models/{repo}/revision/main", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("olah did not start in time")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
