"""The default thread count: INFER_THREADS, else the physical cores other programs leave free.

Unit tests of the choice (pure logic), and the installed `infer` reporting the count it used.
Nothing here depends on speed: decoding rates on a busy machine are benchmarks/busy.py's job."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from infer import hardware
from infer.errors import UsageError
from infer.hardware import CpuSample, busy_cores, choose_threads


@pytest.mark.parametrize("physical, busy, expected", [
    (2, 0.0, 2), (2, 0.4, 2), (2, 0.6, 1), (2, 1.0, 1), (2, 2.0, 1), (2, 5.0, 1),
    (8, 0.0, 8), (8, 1.2, 7), (8, 2.7, 5), (1, 0.0, 1), (1, 3.0, 1),
])
def test_free_cores_are_physical_minus_busy_at_least_one(physical, busy, expected):
    assert choose_threads(physical, busy) == expected


def test_busy_cores_leave_out_this_process_own_time():
    before = CpuSample(wall=10.0, busy=100.0, own=1.0)
    # 1 s: the CPUs were busy 1.5 s in all, 0.5 s of it this process (its model load): 1 core elsewhere
    assert busy_cores(before, CpuSample(wall=11.0, busy=101.5, own=1.5)) == pytest.approx(1.0)
    assert busy_cores(before, CpuSample(wall=11.0, busy=100.5, own=1.5)) == 0.0  # only this process
    assert busy_cores(before, CpuSample(wall=10.0, busy=105.0, own=1.0)) == 0.0  # no time passed
    # what the tick counters cannot resolve is not counted: one tick on each of 2 CPUs at 100 Hz
    assert busy_cores(before, CpuSample(wall=10.1, busy=100.02, own=1.0, tick=0.02)) == 0.0
    assert busy_cores(before, CpuSample(wall=11.0, busy=101.52, own=1.5, tick=0.02)) == pytest.approx(1.0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/stat")
def test_a_spinning_process_beside_us_is_seen():
    before = hardware.cpu_sample()
    spin = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time() + 0.6\nwhile time.time() < t: pass"])
    spin.wait(timeout=30)
    after = hardware.cpu_sample()
    assert before is not None and after is not None
    # the child kept a core busy for most of the window, or other programs did while it waited for one
    assert busy_cores(before, after) >= 0.5


@pytest.fixture
def fresh_choice(monkeypatch):
    monkeypatch.setattr(hardware, "_since", {"sample": hardware.cpu_sample(), "choice": None})


@pytest.mark.parametrize("value, expected", [("1", 1), ("3", 3), (" 2 ", 2), ("64", 64)])
def test_infer_threads_is_the_default(value, expected, monkeypatch, fresh_choice):
    monkeypatch.setenv("INFER_THREADS", value)
    assert hardware.default_threads() == expected
    assert hardware.threads_note(None) == f"{expected} (INFER_THREADS)"
    assert hardware.threads_note(4) == "4 (-t)"


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_a_bad_infer_threads_is_a_usage_error(value, monkeypatch, fresh_choice):
    monkeypatch.setenv("INFER_THREADS", value)
    with pytest.raises(UsageError, match="INFER_THREADS"):
        hardware.default_threads()


def test_without_infer_threads_between_one_and_the_physical_cores(monkeypatch, fresh_choice):
    monkeypatch.delenv("INFER_THREADS", raising=False)
    monkeypatch.setattr(hardware, "MIN_WINDOW_S", 0.0)
    n = hardware.default_threads()
    assert 1 <= n <= hardware.physical_cores()
    assert hardware.threads_note(None).startswith(f"{n} ({hardware.physical_cores()} physical cores")


def test_a_decision_stands_until_there_is_a_new_window_to_judge(monkeypatch, fresh_choice):
    monkeypatch.delenv("INFER_THREADS", raising=False)
    first = hardware.thread_choice()
    assert hardware.thread_choice() is first  # asked again at once: nothing new was sampled


# -- the installed command -------------------------------------------------------------------------

def threads_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("threads: ")]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.model
@pytest.mark.parametrize("value", ["1", "3"])
def test_run_uses_and_reports_infer_threads(value, infer, smollm2):
    proc = infer("run", "-m", smollm2.path, "--raw", "-n", "4", "--verbose", "Hello", env={"INFER_THREADS": value})
    assert proc.returncode == 0, proc.stderr
    assert threads_line(proc.stderr) == f"threads: {value} (INFER_THREADS)"


@pytest.mark.model
def test_the_threads_option_beats_infer_threads(infer, smollm2):
    proc = infer("run", "-m", smollm2.path, "--raw", "-n", "4", "--verbose", "-t", "2", "Hello",
                 env={"INFER_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert threads_line(proc.stderr) == "threads: 2 (-t)"


@pytest.mark.model
def test_without_either_the_free_cores_are_used(infer, smollm2):
    proc = infer("run", "-m", smollm2.path, "--raw", "-n", "4", "--verbose", "Hello", env={"INFER_THREADS": ""})
    assert proc.returncode == 0, proc.stderr
    line = threads_line(proc.stderr)
    n = int(line.split()[1])
    assert 1 <= n <= hardware.physical_cores()
    assert f"({hardware.physical_cores()} physical cores" in line


@pytest.mark.model
def test_a_bad_infer_threads_fails_with_one_line_and_exit_2(infer, smollm2):
    proc = infer("run", "-m", smollm2.path, "--raw", "-n", "4", "Hello", env={"INFER_THREADS": "lots"})
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "INFER_THREADS" in proc.stderr


@pytest.mark.model
def test_bench_reports_the_threads_it_used(infer, smollm2):
    proc = infer("bench", "-m", smollm2.path, "-p", "16", "-n", "4", "-r", "1", "--json", env={"INFER_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["threads"] == 1
