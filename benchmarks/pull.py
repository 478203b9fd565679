"""Pull throughput over loopback: `infer pull` vs `curl` downloading the same file from the same server.

    python benchmarks/pull.py [--mb 512] [-r 3]

The server is tests/faultserver.py with no faults (a Range-capable Hub stand-in). `infer pull`
also lists the repo, hashes every byte (sha256), fsyncs and renames; curl only writes the file.
Prints a table and writes benchmarks/results/pull.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from common import infer_bin, save, summary, table, timed

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from faultserver import COMMIT, FaultHub  # noqa: E402

REPO = "bench/big-GGUF"
NAME = "big-Q4_K_M.gguf"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=512)
    ap.add_argument("-r", "--repeat", type=int, default=3)
    args = ap.parse_args()
    if not shutil.which("curl"):
        raise SystemExit("curl is needed for the comparison")
    data = b"GGUF" + os.urandom(args.mb * 1024 * 1024 - 4)
    infer_s, curl_s = [], []
    with FaultHub() as hub, tempfile.TemporaryDirectory() as tmp:
        hub.add(REPO, NAME, data)
        url = f"{hub.url}/{REPO}/resolve/{COMMIT}/{NAME}"
        for i in range(args.repeat):
            home = Path(tmp) / f"run{i}"
            env = {**os.environ, "INFER_HOME": str(home), "INFER_MODELS": str(home / "store"), "HF_ENDPOINT": hub.url,
                   "HF_HUB_DISABLE_XET": "1"}
            t, _ = timed([infer_bin(), "pull", REPO, "--quiet"], env=env)
            infer_s.append(t)
            t, _ = timed(["curl", "-sS", "-o", str(home / "curl.bin"), url])
            curl_s.append(t)
            shutil.rmtree(home)
    mb = len(data) / 1e6
    a, b = summary(infer_s), summary(curl_s)
    rows = [("infer pull", f"{a['median']:.2f}", f"{mb / a['median']:.0f}"),
            ("curl", f"{b['median']:.2f}", f"{mb / b['median']:.0f}")]
    print(table(rows, (f"{mb:.0f} MB over loopback", "median s", "MB/s")))
    ratio = (mb / a["median"]) / (mb / b["median"])
    print(f"\ninfer throughput / curl throughput = {ratio:.2f}   ({args.repeat} interleaved runs)")
    print("saved", save("pull", {"size_bytes": len(data), "infer_s": a, "curl_s": b, "throughput_ratio": ratio}))


if __name__ == "__main__":
    main()
