#!/usr/bin/env bash
# CUDA verification on a GPU machine with no network (the H100 lent by the workplace), in two phases:
#   build:   llama-cpp-python with CUDA from the carried source distribution (+ its native tools),
#            a synthetic Llama-3.2-1B-shaped GGUF quantized to Q4_K_M
#   measure: infer doctor, infer run with offload, the GPU-marked tests, infer bench vs llama-bench,
#            streaming generation vs llama-completion
#   throughput: continuous batching (benchmarks/throughput.py) at 1, 16, 64 sequences against
#            llama-batched-bench and llama-server -np N
#   stream:  one streamed greedy answer, `infer run` (with and without backend sampling) against llama-completion
#   batch:   the whole `infer batch` command at 1, 16, 64 sequences against the same native tools (benchmarks/batch.py)
#   serve:   `infer serve -ngl 99` against `llama-server -np N` with streaming clients (benchmarks/serve.py),
#            N = 1, 16, 64, and `infer run --host` against a cold `infer run`
#   rpc:     the GPU host plus a CPU worker on the same machine (`infer worker --device CPU`), against native
#            ggml-rpc-server + llama-bench --rpc on the same split
#   speculative: the cost of verifying k draft tokens at once (1B and 8B shapes)
# EXTRA_CMAKE_ARGS adds to the build's CMake arguments (-DGGML_CUDA_FA=OFF halves it, for a check that needs no
# flash attention). Inputs in .device-in/ (sdist trimmed of docs/media/.git/tools/ui, wheels the machine lacks, the
# vocab-only GGUF); outputs in .device-out/ (kept between calls on the same machine).
set -euo pipefail
cd "$(dirname "$0")/.."
IN=$PWD/.device-in OUT_DIR=$PWD/.device-out
mkdir -p "$OUT_DIR/bin" "$OUT_DIR/models"
export PYTHONPATH="$OUT_DIR/site:$PWD/src" PATH="$OUT_DIR/bin:$PATH"
MODEL=./.device-out/models/llama-1b-Q4_K_M.gguf
RESULTS=${OUT:-$OUT_DIR}

build() {
  # A wheel, then `pip install --target --upgrade --force-reinstall`: installing the sdist straight into
  # --target left bare llama_cpp/, gguf/ and platformdirs/ folders behind (pip skips existing folders).
  CMAKE_ARGS="-DGGML_CUDA=on -DGGML_RPC=on -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAVA_BUILD=OFF ${EXTRA_CMAKE_ARGS:-}" \
  CMAKE_BUILD_PARALLEL_LEVEL=16 python3 -m pip wheel -q --no-build-isolation --no-index --no-deps -w "$OUT_DIR/wheels" \
    --config-settings=build-dir="$OUT_DIR/build" "$IN"/llama_cpp_python-*.tar.gz
  python3 -m pip install -q --no-index --no-deps --upgrade --force-reinstall --target "$OUT_DIR/site" \
    "$OUT_DIR"/wheels/llama_cpp_python-*.whl "$IN"/whl/*.whl
  printf '#!/bin/sh\nexec python3 -m infer "$@"\n' > "$OUT_DIR/bin/infer" && chmod +x "$OUT_DIR/bin/infer"
  python3 benchmarks/synth_gguf.py "$IN/ggml-vocab-llama-bpe.gguf" "$OUT_DIR/models/llama-1b-F16.gguf" 1b
  "$OUT_DIR/build/bin/llama-quantize" "$OUT_DIR/models/llama-1b-F16.gguf" "$MODEL" Q4_K_M 16 > /dev/null 2>&1
  python3 -c "import llama_cpp; assert llama_cpp.llama_supports_gpu_offload(), 'no GPU backend was built'"
  ls -la "$OUT_DIR/models"
}

measure() {
  B=$OUT_DIR/build/bin
  nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv | tee "$RESULTS/gpu.txt"
  infer --version
  infer doctor -m "$MODEL" | tee "$RESULTS/doctor.txt"
  infer run -m "$MODEL" -n 32 --stats --raw "Once upon a time" 2>&1 | tail -3 | tee "$RESULTS/run.txt"
  INFER_TEST_GPU_MODEL=$MODEL python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -5 | tee "$RESULTS/tests.txt"
  for i in 1 2 3; do
    "$B/llama-bench" -m "$MODEL" -ngl 99 -fa 1 -p 512 -n 128 -r 5 -o json > "$RESULTS/llama-bench-$i.json"
    infer bench -m "$MODEL" --flash-attn on -p 512 -n 128 -r 5 --json > "$RESULTS/infer-bench-$i.json"
  done
  for i in 1 2 3 4 5; do  # llama-completion's "eval time" excludes sampling: keep both lines
    "$B/llama-completion" -m "$MODEL" -ngl 99 -fa on -n 256 --ignore-eos -no-cnv -p "Once upon a time" --temp 0 \
      2>&1 >/dev/null | grep -E "sampling time|  eval time" | tr '\n' ' ' >> "$RESULTS/llama-completion.txt" || true
    echo >> "$RESULTS/llama-completion.txt"
    infer run -m "$MODEL" --raw --flash-attn on -n 256 --temperature 0 --json "Once upon a time" \
      | python3 -c "import json,sys; d=json.load(sys.stdin); print(d['timings']['gen_tps'], d['usage']['completion_tokens'])" \
      >> "$RESULTS/infer-run.txt"
  done
  python3 - "$RESULTS" <<'PY'
import json, re, statistics, sys, pathlib
r = pathlib.Path(sys.argv[1])
nat = {"pp": [], "tg": []}; ours = {"pp": [], "tg": []}
for f in sorted(r.glob("llama-bench-*.json")):
    for row in json.loads(f.read_text()):
        nat["pp" if row["n_prompt"] else "tg"].append(row["avg_ts"])
for f in sorted(r.glob("infer-bench-*.json")):
    d = json.loads(f.read_text()); ours["pp"].append(d["pp"][0]["tps"]["median"]); ours["tg"].append(d["tg"]["tps"]["median"])
lc = []  # tokens per second counting eval + sampling, as a user of llama-completion waits for them
for line in (r / "llama-completion.txt").read_text().splitlines():
    s = re.search(r"sampling time =\s+([\d.]+) ms", line); e = re.search(r"eval time =\s+([\d.]+) ms /\s+(\d+) runs", line)
    if s and e:
        lc.append(int(e.group(2)) / ((float(s.group(1)) + float(e.group(1))) / 1000))
ir = [float(line.split()[0]) for line in (r / "infer-run.txt").read_text().split("\n") if line.strip()]
med = statistics.median
out = {"pp512": {"native": med(nat["pp"]), "infer": med(ours["pp"])}, "tg128": {"native": med(nat["tg"]), "infer": med(ours["tg"])},
       "stream256": {"llama-completion": med(lc) if lc else None, "infer run": med(ir) if ir else None}}
for k in ("pp512", "tg128"):
    out[k]["ratio"] = out[k]["infer"] / out[k]["native"]
if lc and ir:
    out["stream256"]["ratio"] = med(ir) / med(lc)
    out["stream256"]["vs_llama_bench_tg"] = med(ir) / med(nat["tg"])
(r / "summary.json").write_text(json.dumps(out, indent=2))
print(json.dumps(out, indent=2))
PY
}

throughput() {
  python3 benchmarks/throughput.py -m "$MODEL" --ngl 99 --parallel 1 16 64 --requests 64 -p 128 -n 128 \
    --bin "$OUT_DIR/build/bin" --rounds "${ROUNDS:-2}" 2>&1 | tee "$RESULTS/throughput.txt"
  cp benchmarks/results/throughput.json "$RESULTS/" 2>/dev/null || true
}

stream() {  # one streamed greedy answer: llama-completion (eval + sampling) against `infer run`, whose greedy
  # token is sampled inside the decode on a GPU (backend sampling), and the same with INFER_BACKEND_SAMPLING=0
  B=$OUT_DIR/build/bin; : > "$RESULTS/stream.txt"
  for i in 1 2 3; do
    "$B/llama-completion" -m "$MODEL" -ngl 99 -fa on -n 256 --ignore-eos -no-cnv -p "Once upon a time" --temp 0 \
      2>&1 >/dev/null | grep -E "sampling time|  eval time" | tr '\n' ' ' | sed 's/^/native /' >> "$RESULTS/stream.txt"
    echo >> "$RESULTS/stream.txt"
    for bs in auto 0; do
      INFER_BACKEND_SAMPLING=$bs infer run -m "$MODEL" --raw --flash-attn on -n 256 --temperature 0 --json "Once upon a time" \
        | python3 -c "import json,sys; d=json.load(sys.stdin); print('infer-$bs', d['timings']['gen_tps'])" >> "$RESULTS/stream.txt"
    done
  done
  python3 - "$RESULTS/stream.txt" <<'PY'
import re, statistics, sys
native, ours = [], {"auto": [], "0": []}
for line in open(sys.argv[1]):
    s = re.search(r"sampling time =\s+([\d.]+) ms", line); e = re.search(r"eval time =\s+([\d.]+) ms /\s+(\d+) runs", line)
    if s and e:
        native.append(int(e.group(2)) / ((float(s.group(1)) + float(e.group(1))) / 1000))
    elif line.startswith("infer-"):
        k, v = line.split(); ours[k[6:]].append(float(v))
med = statistics.median
print(f"llama-completion {med(native):.0f} tok/s; infer run {med(ours['auto']):.0f} (in-graph sampling), "
      f"{med(ours['0']):.0f} (argmax on the CPU); ratios {med(ours['auto']) / med(native):.3f} / {med(ours['0']) / med(native):.3f}")
PY
}

batch() {  # the whole `infer batch` command (JSONL in, fsynced JSONL out) against the same native tools
  python3 benchmarks/batch.py -m "$MODEL" --ngl 99 --parallel 1 16 64 --requests 64 -p 128 -n 128 \
    --bin "$OUT_DIR/build/bin" --rounds "${ROUNDS:-1}" 2>&1 | tee "$RESULTS/batch.txt"
  cp benchmarks/results/batch.json "$RESULTS/" 2>/dev/null || true
}

serve() {
  python3 benchmarks/serve.py -m "$MODEL" --ngl 99 --parallel 1 16 64 --requests 64 -p 128 -n 128 \
    --bin "$OUT_DIR/build/bin" --rounds "${ROUNDS:-1}" --oneshot 2>&1 | tee "$RESULTS/serve.txt"
  cp benchmarks/results/serve.json "$RESULTS/" 2>/dev/null || true
}

rpc() {  # a quarter of the layers on a CPU worker (loopback), the rest on the local GPU: infer, then native
  B=$OUT_DIR/build/bin
  infer worker --device CPU --port 50111 -t 16 > "$RESULTS/worker.out" 2> "$RESULTS/worker.err" &
  W=$!; for _ in $(seq 100); do grep -q listening "$RESULTS/worker.out" && break; sleep 0.2; done
  infer bench -m "$MODEL" --rpc 127.0.0.1:50111 --force-rpc --tensor-split 1,3 --flash-attn on -p 512 -n 128 -r 3 \
    --json > "$RESULTS/rpc-infer.json" 2> "$RESULTS/rpc-infer.err" || cat "$RESULTS/rpc-infer.err"
  kill $W; wait $W 2>/dev/null || true
  "$B/ggml-rpc-server" -d CPU -p 50112 -t 16 > /dev/null 2>&1 &
  W=$!; sleep 2
  "$B/llama-bench" -m "$MODEL" --rpc 127.0.0.1:50112 -ngl 99 -ts 1/3 -fa 1 -p 512 -n 128 -r 3 -o json \
    > "$RESULTS/rpc-native.json" || true
  kill $W; wait $W 2>/dev/null || true
  python3 - "$RESULTS" <<'PY'
import json, pathlib, re, sys
r = pathlib.Path(sys.argv[1])
ours = json.loads((r / "rpc-infer.json").read_text()); native = {("pp" if x["n_prompt"] else "tg"): x["avg_ts"]
                                                                  for x in json.loads((r / "rpc-native.json").read_text())}
m = re.search(r"predicted ([\d.]+) tok/s against ([\d.]+)", (r / "rpc-infer.err").read_text())
out = {"infer_tg": ours["tg"]["tps"]["median"], "native_tg": native["tg"], "infer_pp": ours["pp"][0]["tps"]["median"],
       "native_pp": native["pp"], "predicted_tg": float(m.group(1)) if m else None}
out["tg_ratio"], out["pp_ratio"] = out["infer_tg"] / out["native_tg"], out["infer_pp"] / out["native_pp"]
(r / "rpc-summary.json").write_text(json.dumps(out, indent=2)); print(json.dumps(out, indent=2))
PY
}

speculative() {  # the cost of verifying k draft tokens in one decode, 1B and 8B shapes
  [ -f "$OUT_DIR/models/llama-8b-Q4_K_M.gguf" ] || {
    python3 benchmarks/synth_gguf.py "$IN/ggml-vocab-llama-bpe.gguf" "$OUT_DIR/models/llama-8b-F16.gguf" 8b
    "$OUT_DIR/build/bin/llama-quantize" "$OUT_DIR/models/llama-8b-F16.gguf" "$OUT_DIR/models/llama-8b-Q4_K_M.gguf" Q4_K_M 16 > /dev/null 2>&1
    rm -f "$OUT_DIR/models/llama-8b-F16.gguf"; }
  for m in "$MODEL" "$OUT_DIR/models/llama-8b-Q4_K_M.gguf"; do
    python3 benchmarks/speculative.py verify -m "$m" --ngl 99 -r 3 2>&1 | tee -a "$RESULTS/verify.txt"
  done
}

for phase in "${@:-measure}"; do "$phase"; done
