"""Small synthetic GGUF files written with the gguf package (valid headers and tensors; not runnable)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_gguf(path: Path, label: str, n: int = 1000, ctx: int = 256, split: tuple[int, int] | None = None) -> bytes:
    from gguf import GGUFWriter

    path.parent.mkdir(parents=True, exist_ok=True)
    w = GGUFWriter(str(path), "llama")
    w.add_name(label)  # makes each file's bytes (and sha256) distinct
    w.add_context_length(ctx)
    w.add_block_count(1)
    if split:
        w.add_uint16("split.no", split[0] - 1)
        w.add_uint16("split.count", split[1])
    w.add_tensor("token_embd.weight", np.arange(n, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()
