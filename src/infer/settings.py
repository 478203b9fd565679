"""Paths and environment variables: every variable infer reads is declared here, once.

Values are read lazily (at call time), so tests and users can change the environment
between invocations of the library.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class EnvVar:
    name: str
    doc: str
    commands: tuple[str, ...] = ()  # commands that read it; () means all

    def get(self) -> str | None:
        value = os.environ.get(self.name)
        return value if value not in (None, "") else None

    def flag(self) -> bool:
        return (self.get() or "").strip().lower() in {"1", "true", "yes", "on"}


INFER_MODEL = EnvVar("INFER_MODEL", "Default model reference when -m is not given.", ("run", "chat", "batch", "bench", "show", "embed"))
INFER_MODELS = EnvVar("INFER_MODELS", "Model store directory (Hugging Face cache layout). Default: HF_HUB_CACHE.")
INFER_HOME = EnvVar("INFER_HOME", "Put infer's config, data and state under this one directory.")
INFER_OFFLINE = EnvVar("INFER_OFFLINE", "1: never touch the network; run/chat will not auto-pull.")
INFER_DEBUG = EnvVar("INFER_DEBUG", "1: show Python tracebacks for errors.")
HF_TOKEN = EnvVar("HF_TOKEN", "Hugging Face token for gated or private repos.", ("pull", "run", "chat", "batch", "embed"))
HF_ENDPOINT = EnvVar("HF_ENDPOINT", "Hugging Face Hub endpoint (a mirror). Default: https://huggingface.co.", ("pull", "run", "chat", "batch", "embed"))
HF_HUB_CACHE = EnvVar("HF_HUB_CACHE", "Hugging Face cache directory, used as the store when INFER_MODELS is unset.")
HF_HOME = EnvVar("HF_HOME", "Hugging Face home; the store is $HF_HOME/hub when nothing more specific is set.")
HF_HUB_OFFLINE = EnvVar("HF_HUB_OFFLINE", "1: same as INFER_OFFLINE.")
NO_COLOR = EnvVar("NO_COLOR", "Any value: no colour in any output.")
INFER_THREADS = EnvVar("INFER_THREADS", "CPU threads when -t is not given. Default: the physical cores other programs leave free.",
                       ("run", "chat", "bench", "worker"))
INFER_STALL_TIMEOUT = EnvVar("INFER_STALL_TIMEOUT", "Seconds without a byte before a download is dropped and resumed (30).",
                             ("pull",))
INFER_RETRY_BACKOFF = EnvVar("INFER_RETRY_BACKOFF", "First wait in seconds between retries of a download, or of a "
                             "batch request to --host, doubled each time (1).", ("pull", "batch"))
INFER_TEST_FREE_BYTES = EnvVar("INFER_TEST_FREE_BYTES", "Testing only: pretend the store's disk has this many bytes free.",
                               ("pull",))
INFER_HOST = EnvVar("INFER_HOST", "URL of a running `infer serve` (or any OpenAI-compatible server): run, chat and batch "
                    "use it instead of loading the model; ps asks it (default http://127.0.0.1:11435).",
                    ("ps", "run", "chat", "batch"))
INFER_API_KEY = EnvVar("INFER_API_KEY", "API key that `infer serve` requires (Authorization: Bearer KEY); "
                       "clients of a server send it.", ("serve", "ps", "run", "chat", "batch"))
INFER_RPC = EnvVar("INFER_RPC", "RPC workers (HOST:PORT,...) to split the model across when --rpc is not given.",
                   ("run", "chat", "serve", "batch", "bench"))
INFER_CPU_AMX = EnvVar("INFER_CPU_AMX", "1: let llama.cpp repack weights for Intel AMX, whose kernels can crash "
                       "(off by default on CPUs with AMX).", ("run", "chat", "serve", "batch", "bench", "embed", "doctor"))

REGISTRY: tuple[EnvVar, ...] = (
    INFER_MODEL, INFER_MODELS, INFER_HOME, INFER_OFFLINE, INFER_DEBUG,
    HF_TOKEN, HF_ENDPOINT, HF_HUB_CACHE, HF_HOME, HF_HUB_OFFLINE, NO_COLOR, INFER_THREADS,
    INFER_STALL_TIMEOUT, INFER_RETRY_BACKOFF, INFER_TEST_FREE_BYTES, INFER_API_KEY, INFER_HOST, INFER_RPC,
    INFER_CPU_AMX,
)


def env_for(command: str) -> list[EnvVar]:
    """The variables a command reads, for its --help."""
    return [v for v in REGISTRY if not v.commands or command in v.commands]


def _platform_dir(kind: str) -> Path:
    home = INFER_HOME.get()
    if home:
        return Path(home).expanduser() / kind
    import platformdirs

    getter = {
        "config": platformdirs.user_config_dir,
        "data": platformdirs.user_data_dir,
        "state": platformdirs.user_state_dir,
        "cache": platformdirs.user_cache_dir,
    }[kind]
    return Path(getter("infer", appauthor=False))


def config_dir() -> Path:
    return _platform_dir("config")


def data_dir() -> Path:
    return _platform_dir("data")


def state_dir() -> Path:
    return _platform_dir("state")


def prompt_cache_dir() -> Path:
    return _platform_dir("cache") / "prompts"


def rpc_cache_dir() -> Path:
    return _platform_dir("cache") / "rpc"


def models_dir() -> Path:
    """The store: INFER_MODELS, else HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub."""
    for var in (INFER_MODELS, HF_HUB_CACHE):
        if var.get():
            return Path(var.get()).expanduser()
    if HF_HOME.get():
        return Path(HF_HOME.get()).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def offline() -> bool:
    return INFER_OFFLINE.flag() or HF_HUB_OFFLINE.flag()


def hf_endpoint() -> str:
    return (HF_ENDPOINT.get() or "https://huggingface.co").rstrip("/")


def debug() -> bool:
    return INFER_DEBUG.flag()
