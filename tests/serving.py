"""A real `infer serve --port 0` in a subprocess: waits for `listening on URL`, keeps its stderr, stops it."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

from conftest import infer_bin

LISTENING = re.compile(r"listening on (http://\S+)")


class Server:
    def __init__(self, env: dict, *args: str, timeout: float = 300):
        self.env = env
        self.lines: list[str] = []
        self.proc = subprocess.Popen([infer_bin(), "serve", "--port", "0", *args], env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self._ready = threading.Event()
        self.url = ""
        threading.Thread(target=self._drain, daemon=True).start()
        if not self._ready.wait(timeout) or not self.url:
            self.stop()
            raise AssertionError("infer serve did not start:\n" + self.stderr)

    def _drain(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)
            found = LISTENING.search(line)
            if found and not self.url:
                self.url = found.group(1)
                self._ready.set()
        self._ready.set()

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def wait_for(self, predicate, timeout: float = 30, every: float = 0.05):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            value = predicate()
            if value:
                return value
            time.sleep(every)
        raise AssertionError("condition not met in time; server stderr:\n" + self.stderr[-3000:])


def private_env(smollm2, root: Path) -> dict:
    """The test cache's store (smollm2 pulled) with a private copy of infer's data dir (the manifest is touched)."""
    env = dict(smollm2.env)
    home = root / "home"
    shutil.copytree(Path(env["INFER_HOME"]) / "data", home / "data", dirs_exist_ok=True)
    env["INFER_HOME"] = str(home)
    return env


def metric(text: str, name: str, **labels) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key == (f"{name}{{{want}}}" if want else name):
            return float(value)
    return 0.0
