"""The one error hierarchy. Each error carries a message, a hint and an exit code;
the CLI boundary (cli/app.py) turns them into one line on stderr."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    INTERNAL = 1
    USAGE = 2
    MODEL_NOT_FOUND = 3
    BAD_MODEL = 4
    CONTEXT_OVERFLOW = 5
    NETWORK = 6
    VERIFY = 7
    NO_SPACE = 8
    DISK = 8  # the same code: a local disk error (no space, read-only, permission denied)
    AUTH = 9
    PARTIAL = 10
    WORKER = 11
    INTERRUPTED = 130


EXIT_CODE_DOCS: dict[ExitCode, str] = {
    ExitCode.OK: "success",
    ExitCode.INTERNAL: "internal error (a bug: please report it; INFER_DEBUG=1 shows the traceback)",
    ExitCode.USAGE: "usage error: bad option, value or missing prompt",
    ExitCode.MODEL_NOT_FOUND: "model not found: unknown alias, missing file, repo/quant not found, not pulled while offline",
    ExitCode.BAD_MODEL: "not a GGUF file, truncated or corrupt model, or one llama.cpp cannot load",
    ExitCode.CONTEXT_OVERFLOW: "prompt does not fit the context window",
    ExitCode.NETWORK: "network error: server unreachable, or failing after retries",
    ExitCode.VERIFY: "checksum mismatch: downloaded or stored bytes are not the expected ones",
    ExitCode.NO_SPACE: "disk error or not enough memory: no space left, the store or data dir not writable "
                       "(read-only, permission denied), or the model does not fit in memory",
    ExitCode.AUTH: "gated or private repo: authentication required",
    ExitCode.PARTIAL: "batch finished, but some lines failed: their error lines are in the output",
    ExitCode.WORKER: "an RPC worker (--rpc) is unreachable, not a worker, of another llama.cpp version, or was lost "
                     "mid-generation",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
}


class InferError(Exception):
    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(InferError):
    exit_code = ExitCode.USAGE


class ModelNotFound(InferError):
    exit_code = ExitCode.MODEL_NOT_FOUND


class BadModel(InferError):
    exit_code = ExitCode.BAD_MODEL


class ContextOverflow(InferError):
    exit_code = ExitCode.CONTEXT_OVERFLOW


class NetworkError(InferError):
    exit_code = ExitCode.NETWORK


class VerifyError(InferError):
    exit_code = ExitCode.VERIFY


class NoSpace(InferError):
    exit_code = ExitCode.NO_SPACE


class WorkerError(InferError):
    """An RPC worker named by --rpc cannot be used, or was lost while generating."""

    exit_code = ExitCode.WORKER


class DiskError(InferError):
    """A local file could not be read or written: never retried, never reported as a network error."""

    exit_code = ExitCode.DISK


def disk_error(e: OSError, doing: str, path=None) -> DiskError:
    """`disk error: cannot write /path: No space left on device`, with a hint that fits the cause."""
    import errno

    where = path if path is not None else (e.filename or "?")
    reason = e.strerror or type(e).__name__
    hints = {
        errno.ENOSPC: "free some space (`infer rm`), or set INFER_MODELS to a bigger disk; a pull resumes",
        errno.EDQUOT: "free some space, or set INFER_MODELS to another disk; a pull resumes",
        errno.EROFS: "the file system is read-only: set INFER_MODELS / INFER_HOME to a writable place",
        errno.EACCES: "check the permissions, or set INFER_MODELS / INFER_HOME to a writable place",
        errno.EPERM: "check the permissions, or set INFER_MODELS / INFER_HOME to a writable place",
    }
    return DiskError(f"disk error: cannot {doing} {where}: {reason}", hint=hints.get(e.errno))


class AuthError(InferError):
    exit_code = ExitCode.AUTH


class PartialFailure(InferError):
    exit_code = ExitCode.PARTIAL
