"""Ctrl-C that Python would otherwise lose.

A KeyboardInterrupt raised inside a callback that C code calls (a ctypes callback such as llama.cpp's log, or a
weakref callback such as the import system's module locks) cannot propagate: Python prints "Exception ignored"
and drops it, and the program goes on as if the key had not been pressed (a chat starting up would then sit at
its prompt). `install()` catches such an interrupt and delivers SIGINT again a moment later, to whatever code is
running then.
"""

import os
import signal
import sys
import threading


def redeliver_sigint() -> None:
    """Send SIGINT to this process again, from another thread, once the callback being run has returned."""
    threading.Timer(0.02, os.kill, (os.getpid(), signal.SIGINT)).start()


def _unraisable(unraisable) -> None:
    if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
        redeliver_sigint()
        return
    sys.__unraisablehook__(unraisable)


def install() -> None:
    sys.unraisablehook = _unraisable
