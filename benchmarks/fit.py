"""Will-it-fit: infer's memory estimate vs the measured peak RSS on CPU, at several context sizes.

    python benchmarks/fit.py [-c 512 -c 2048 -c 8192]

Each size runs in a fresh process that loads the model, creates the context and generates a few
tokens (so the weights are really read); its peak RSS (getrusage) is compared with
hardware.estimate(). Writes benchmarks/results/fit.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from common import save, table, test_model

CHILD = r"""
import json, resource, sys
from pathlib import Path
from infer.engine import Done, LoadOptions, Model, Sampling
m = Model(Path(sys.argv[1]), LoadOptions(n_ctx=int(sys.argv[2])))
_, toks = m.format_chat([{"role": "user", "content": "Say something."}])
list(m.generate(toks, Sampling(temperature=0, max_tokens=8)))
print(json.dumps({"rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-c", "--ctx", type=int, action="append")
    args = ap.parse_args()
    from infer.gguf_meta import read_info
    from infer.hardware import estimate

    model = test_model()
    info = read_info(model)
    rows, out = [], []
    for n_ctx in args.ctx or [512, 2048, 8192]:
        rss = json.loads(subprocess.run([sys.executable, "-c", CHILD, str(model), str(n_ctx)], capture_output=True,
                                        text=True, check=True).stdout)["rss"]
        est = estimate(info, model.stat().st_size, n_ctx)
        err = (est.total - rss) / rss
        rows.append((n_ctx, f"{est.total / 1e6:.0f}", f"{rss / 1e6:.0f}", f"{err * 100:+.1f}%",
                     f"{est.weights / 1e6:.0f}/{est.kv_cache / 1e6:.0f}/{est.compute / 1e6:.0f}/{est.overhead / 1e6:.0f}"))
        out.append({"n_ctx": n_ctx, "estimate": est.total, "peak_rss": rss, "error": err})
    print(table(rows, ("ctx", "estimate MB", "peak RSS MB", "error", "weights/kv/compute/runtime MB")))
    print("saved", save("fit", {"runs": out}))


if __name__ == "__main__":
    main()
