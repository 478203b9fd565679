"""`infer doctor`: one screen that says what will happen if you run a model here."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from infer.cli import console, options as o, render
from infer.units import human_bytes

EPILOG = """\
Examples:

\b
  infer doctor
  infer doctor -m smollm2 -c 8192
  infer doctor --json | jq .devices
  infer doctor --rpc 192.168.1.20:50052 -m qwen2.5:7b
"""


def doctor(
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Also estimate memory and offload for this pulled model.",
                                                 autocompletion=o.complete_model, show_default=False)] = None,
    ctx_size: o.CtxSize = None,
    kv_type: o.KvType = "f16",
    rpc: Annotated[Optional[str], typer.Option(
        "--rpc", metavar="HOST:PORT,...", help="Also probe these RPC workers: devices, free memory, round trip, "
        "bandwidth, and the model's fit across them.", show_default=False)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Check this machine: versions, backends, devices and memory, paths, Hub settings, RPC, and a model's fit."""
    from infer import doctor as core

    data = core.report(model, ctx_size, kv_type, rpc)
    if json_out:
        render.print_json(data)
        return
    out = console.out()

    def row(key: str, value: str) -> None:
        out.print(f"[bold]{key:<14}[/bold] {console.escape(value)}")

    row("infer", f"{data['infer']} (llama-cpp-python {data['llama_cpp_python']}, Python {data['python']}, {data['platform']})")
    cpu = data["cpu"]
    row("cpu", f"{cpu['physical_cores']} cores ({cpu['logical_cpus']} threads); {' '.join(cpu['features']) or '-'}")
    row("memory", f"{human_bytes(data['memory']['available'])} available of {human_bytes(data['memory']['total'])}")
    row("gpu backend", "yes: GPU offload is compiled in" if data["gpu_offload"] else "no: this build runs on the CPU only")
    for d in data["devices"]:
        row(f"device {d['kind']}", f"{d['name']} ({d['description']}): {human_bytes(d['free'])} free of {human_bytes(d['total'])}")
    for key, p in data["paths"].items():
        row(key, f"{p['path']} ({human_bytes(p['size'])})")
    r = data["rpc"]
    row("rpc", f"yes: llama.cpp's RPC backend, protocol {r['protocol']}" if r["available"]
        else f"no: this build has no RPC backend ({r['enable']})")
    for w in data.get("workers", []):
        if "error" in w:
            row("worker", f"{w['endpoint']}: {w['error']}")
            continue
        memory = ", ".join(f"{human_bytes(d['free'])} free of {human_bytes(d['total'])}" for d in w["devices"])
        row("worker", f"{w['endpoint']} (protocol {w['protocol']}): {memory}; {w['rtt_ms']:.2f} ms round trip, "
                      f"{w['bandwidth'] / 1e6:.0f} MB/s")
    row("pulled", f"{data['pulled_models']} model(s)")
    hub = data["hub"]
    row("hub", f"{hub['endpoint']} · token {hub['token']} · offline {'on' if hub['offline'] else 'off'}")
    if "model" in data:
        m = data["model"]
        e = m["estimate"]
        row("model", f"{m['name']} ({m['layers']} layers, {m['n_ctx']}-token context, KV {m['kv_type']})")
        row("needs", f"{human_bytes(e['total'])} = weights {human_bytes(e['weights'])} + KV cache {human_bytes(e['kv_cache'])}"
                     f" + compute {human_bytes(e['compute'])} + runtime {human_bytes(e['runtime'])}")
        row("plan", m["plan"]["where"] + ("" if m["plan"]["fits"] else " — it does NOT fit in free RAM and VRAM"))
        if "rpc" in m:
            f = m["rpc"]
            row("split", f"{'fits' if f['fits'] else 'does NOT fit'} across this machine and {f['workers']} worker(s) "
                         f"({human_bytes(f['free_together'])} free together); predicted {f['predicted_tps']} tok/s "
                         f"against {f['local_tps']} tok/s here alone")
    for line in data["advice"]:
        console.warn(line)
