"""Small synthetic GGUF files written with the gguf package: valid headers and tensors (write_gguf, not runnable),
and a runnable tiny Llama with a real tokenizer (write_tiny_llama)."""

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


def write_tiny_llama(path: Path, tokenizer_from: Path, renamed: dict[int, str] | None = None) -> Path:
    """A runnable two-layer Llama with random weights (a few MB) and the tokenizer of another GGUF, some token
    texts optionally changed (`renamed`: id -> text): a draft model that proposes nonsense, or one with another
    vocabulary."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    reader = GGUFReader(str(tokenizer_from))
    w = GGUFWriter(str(path), "llama")
    n_vocab = 0
    for name, field in reader.fields.items():
        if not name.startswith("tokenizer."):
            continue
        value = field.contents()
        if field.types[0] == GGUFValueType.ARRAY:
            if name == "tokenizer.ggml.tokens":
                n_vocab = len(value)
                value = [renamed.get(i, t) for i, t in enumerate(value)] if renamed else value
            w.add_key_value(name, value, field.types[0], sub_type=field.types[-1])
        else:
            w.add_key_value(name, value, field.types[0])
    embd, n_head, n_kv, n_ff, n_layer = 64, 4, 2, 128, 2
    head = embd // n_head
    for add, value in ((w.add_context_length, 8192), (w.add_embedding_length, embd), (w.add_block_count, n_layer),
                       (w.add_feed_forward_length, n_ff), (w.add_head_count, n_head), (w.add_head_count_kv, n_kv),
                       (w.add_rope_dimension_count, head), (w.add_rope_freq_base, 10000.0),
                       (w.add_layer_norm_rms_eps, 1e-5), (w.add_vocab_size, n_vocab), (w.add_file_type, 1)):
        add(value)
    w.add_name("tiny-draft")
    rng = np.random.default_rng(0)

    def weight(rows: int, cols: int):
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)

    w.add_tensor("token_embd.weight", weight(n_vocab, embd))
    w.add_tensor("output_norm.weight", np.ones(embd, dtype=np.float32))
    for i in range(n_layer):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(embd, dtype=np.float32))
        for name, rows in (("attn_q", embd), ("attn_k", n_kv * head), ("attn_v", n_kv * head), ("attn_output", embd)):
            w.add_tensor(p + name + ".weight", weight(rows, embd))
        w.add_tensor(p + "ffn_norm.weight", np.ones(embd, dtype=np.float32))
        w.add_tensor(p + "ffn_gate.weight", weight(n_ff, embd))
        w.add_tensor(p + "ffn_up.weight", weight(n_ff, embd))
        w.add_tensor(p + "ffn_down.weight", weight(embd, n_ff))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
