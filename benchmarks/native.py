"""Native llama.cpp next to infer, same model and threads.

    python benchmarks/native.py build        # once: build llama-bench, llama-completion, llama-batched-bench, llama-server
                                             # and ggml-rpc-server (with GGML_RPC=ON) into benchmarks/.cache
    python benchmarks/native.py [-r 5]       # llama-bench vs `infer bench`, interleaved; prints ratios

The native tools come from the vendored llama.cpp inside the llama-cpp-python source distribution
of the installed version (`pip download --no-binary :all: --no-deps`), so both sides run the same
llama.cpp code. The build lives in benchmarks/.cache (ignored by git).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
from importlib import metadata
from pathlib import Path

from common import HERE, infer_bin, same_weights, save, summary, table, test_model

CACHE = HERE / ".cache"
TOOLS = ("llama-bench", "llama-completion", "llama-batched-bench", "llama-server", "ggml-rpc-server")


def native_dir() -> Path:
    return CACHE / f"llama.cpp-{metadata.version('llama_cpp_python')}"


def tool(name: str) -> Path:
    return native_dir() / "build" / "bin" / name


def build() -> None:
    version = metadata.version("llama_cpp_python")
    src = native_dir() / "src"
    if not src.exists():
        CACHE.mkdir(exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "-q",
                        "-d", str(CACHE), f"llama-cpp-python=={version}"], check=True)
        sdist = next(CACHE.glob(f"llama_cpp_python-{version}.tar.gz"))
        with tarfile.open(sdist) as tar:
            tar.extractall(CACHE / "extract", filter="data")
        src.parent.mkdir(parents=True, exist_ok=True)
        (CACHE / "extract" / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp").rename(src)
    if all(tool(name).exists() for name in TOOLS):
        print("already built:", native_dir() / "build" / "bin")
        return
    build_dir = native_dir() / "build"
    subprocess.run(["cmake", "-S", str(src), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
                    "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=ON",
                    "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",
                    "-DGGML_RPC=ON",
                    *os.environ.get("CMAKE_ARGS", "").split()], check=True)
    subprocess.run(["cmake", "--build", str(build_dir), "-j", str(os.cpu_count() or 2),
                    "--target", *TOOLS], check=True)
    print("built:", *(tool(name) for name in TOOLS))


def llama_bench(model: Path, threads: int, pp: int, tg: int, reps: int) -> dict:
    out = subprocess.run([str(tool("llama-bench")), "-m", str(model), *same_weights("llama-bench"), "-t", str(threads), "-p", str(pp),
                          "-n", str(tg), "-r", str(reps), "-o", "json"], capture_output=True, text=True, check=True)
    rows = json.loads(out.stdout)
    return {("pp" if r["n_prompt"] else "tg"): r["avg_ts"] for r in rows}


def infer_bench(model: Path, threads: int, pp: int, tg: int, reps: int) -> dict:
    out = subprocess.run([infer_bin(), "bench", "-m", str(model), "-t", str(threads), "-p", str(pp), "-n", str(tg),
                          "-r", str(reps), "--json"], capture_output=True, text=True, check=True)
    data = json.loads(out.stdout)
    return {"pp": data["pp"][0]["tps"]["median"], "tg": data["tg"]["tps"]["median"]}


def compare(args) -> None:
    if not tool("llama-bench").exists():
        raise SystemExit("run `python benchmarks/native.py build` first")
    from infer.hardware import physical_cores

    threads = args.threads or physical_cores()
    model = test_model()
    native, ours = {"pp": [], "tg": []}, {"pp": [], "tg": []}
    for _ in range(args.repeat):
        for key, value in llama_bench(model, threads, args.pp, args.tg, 3).items():
            native[key].append(value)
        for key, value in infer_bench(model, threads, args.pp, args.tg, 3).items():
            ours[key].append(value)
    rows, result = [], {"threads": threads, "pp": args.pp, "tg": args.tg}
    for key, label in (("pp", f"pp{args.pp} tok/s"), ("tg", f"tg{args.tg} tok/s")):
        n, o = summary(native[key]), summary(ours[key])
        ratio = o["median"] / n["median"]
        rows.append((label, f"{n['median']:.1f}", f"{o['median']:.1f}", f"{ratio:.3f}"))
        result[key] = {"native": n, "infer": o, "ratio": ratio}
    print(table(rows, ("measure", "llama-bench", "infer bench", "infer/native")))
    print(f"\n{threads} threads, {args.repeat} interleaved rounds of 3 repetitions each")
    print("saved", save("native", result))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", nargs="?", default="compare", choices=["build", "compare"])
    ap.add_argument("-r", "--repeat", type=int, default=5)
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("-p", "--pp", type=int, default=512)
    ap.add_argument("-n", "--tg", type=int, default=128)
    args = ap.parse_args()
    build() if args.what == "build" else compare(args)


if __name__ == "__main__":
    main()
