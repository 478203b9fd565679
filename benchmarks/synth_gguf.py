"""Write a GGUF with a real architecture's shapes and random F16 weights (speed does not depend on
the values), taking the tokenizer from a vocab-only GGUF. Used where models cannot travel (the GPU box).

    python benchmarks/synth_gguf.py VOCAB.gguf OUT.gguf [1b|8b]
"""

from __future__ import annotations

import sys

import numpy as np
from gguf import GGUFReader, GGUFValueType, GGUFWriter

SHAPES = {  # Llama-3.2-1B and Llama-3.1-8B
    "1b": dict(n_layer=16, n_embd=2048, n_head=32, n_kv=8, n_ff=8192),
    "8b": dict(n_layer=32, n_embd=4096, n_head=32, n_kv=8, n_ff=14336),
    "tiny": dict(n_layer=2, n_embd=64, n_head=4, n_kv=2, n_ff=128),  # for checking this script
}


def main(vocab_path: str, out: str, shape: str = "1b") -> None:
    s = SHAPES[shape]
    reader = GGUFReader(vocab_path)
    w = GGUFWriter(out, "llama")
    n_vocab = 0
    for name, field in reader.fields.items():
        if not name.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        value = field.contents()
        if vtype == GGUFValueType.ARRAY:
            w.add_key_value(name, value, vtype, sub_type=field.types[-1])
            if name == "tokenizer.ggml.tokens":
                n_vocab = len(value)
        else:
            w.add_key_value(name, value, vtype)
    embd, head = s["n_embd"], s["n_embd"] // s["n_head"]
    w.add_name(f"synthetic-llama-{shape}")
    w.add_context_length(8192)
    w.add_embedding_length(embd)
    w.add_block_count(s["n_layer"])
    w.add_feed_forward_length(s["n_ff"])
    w.add_head_count(s["n_head"])
    w.add_head_count_kv(s["n_kv"])
    w.add_rope_dimension_count(head)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_file_type(1)
    rng = np.random.default_rng(0)

    def weight(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)

    kv = s["n_kv"] * head
    w.add_tensor("token_embd.weight", weight(n_vocab, embd))
    w.add_tensor("output_norm.weight", np.ones(embd, dtype=np.float32))
    for i in range(s["n_layer"]):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(embd, dtype=np.float32))
        w.add_tensor(p + "attn_q.weight", weight(embd, embd))
        w.add_tensor(p + "attn_k.weight", weight(kv, embd))
        w.add_tensor(p + "attn_v.weight", weight(kv, embd))
        w.add_tensor(p + "attn_output.weight", weight(embd, embd))
        w.add_tensor(p + "ffn_norm.weight", np.ones(embd, dtype=np.float32))
        w.add_tensor(p + "ffn_gate.weight", weight(s["n_ff"], embd))
        w.add_tensor(p + "ffn_up.weight", weight(s["n_ff"], embd))
        w.add_tensor(p + "ffn_down.weight", weight(embd, s["n_ff"]))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
