"""GGUF files without loading weights: a fast header check (pure Python, used before
llama.cpp ever sees a file: some malformed files abort the process inside it) and the
full metadata through the `gguf` package (imported lazily: it costs ~0.2 s)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from infer.errors import BadModel, ModelNotFound

GGUF_MAGIC = b"GGUF"
_HEADER = struct.Struct("<4sIQQ")  # magic, version, tensor count, metadata kv count


def check_gguf(path: Path) -> None:
    """Raise a clear error unless `path` is a readable GGUF file with a sane header."""
    if not path.exists():
        raise ModelNotFound(f"model file not found: {path}", hint="check the path, or `infer list` for pulled models")
    if path.is_dir():
        raise BadModel(f"{path} is a directory, not a GGUF file")
    try:
        with path.open("rb") as f:
            head = f.read(_HEADER.size)
    except OSError as e:
        raise BadModel(f"cannot read {path}: {e.strerror}") from e
    if head[:4] != GGUF_MAGIC:
        raise BadModel(
            f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)",
            hint="infer runs GGUF models; convert others with llama.cpp's convert_hf_to_gguf.py",
        )
    if len(head) < _HEADER.size:
        raise BadModel(f"{path} is truncated: the GGUF header is incomplete", hint="pull the model again")
    _, version, n_tensors, n_kv = _HEADER.unpack(head)
    if version not in (2, 3) or n_tensors > 10_000_000 or n_kv > 1_000_000:
        raise BadModel(f"{path} has a corrupt or unsupported GGUF header (version {version})")


@dataclass
class GGUFInfo:
    path: Path
    architecture: str | None = None
    name: str | None = None
    parameters: int = 0
    file_type: str | None = None
    context_length: int | None = None
    block_count: int | None = None
    embedding_length: int | None = None
    head_count: int | None = None
    head_count_kv: int | None = None
    key_length: int | None = None
    value_length: int | None = None
    chat_template: str | None = None
    license: str | None = None
    quantization: str | None = None  # the file type when declared, else the tensor type that holds most weights
    tensor_types: dict[str, int] = field(default_factory=dict)  # elements per tensor type, most first
    split_count: int = 1
    vocab_size: int | None = None
    extra: dict = field(default_factory=dict)


def _scalar(reader, key: str):
    fld = reader.fields.get(key)
    if fld is None or not fld.types:
        return None
    return fld.contents()


def read_info(path: Path) -> GGUFInfo:
    """Read the metadata of a GGUF file (memory-mapped; no weights are loaded)."""
    check_gguf(path)
    from gguf import GGUFReader, LlamaFileType

    try:
        reader = GGUFReader(str(path), "r")
    except (ValueError, struct.error, IndexError, OSError) as e:
        raise BadModel(f"{path} is truncated or corrupt: {e}", hint="pull the model again") from e
    arch = _scalar(reader, "general.architecture")
    info = GGUFInfo(path=path, architecture=arch, name=_scalar(reader, "general.name"))
    for attr, key in (
        ("context_length", "context_length"),
        ("block_count", "block_count"),
        ("embedding_length", "embedding_length"),
        ("head_count", "attention.head_count"),
        ("head_count_kv", "attention.head_count_kv"),
        ("key_length", "attention.key_length"),
        ("value_length", "attention.value_length"),
    ):
        value = _scalar(reader, f"{arch}.{key}")
        if isinstance(value, list):  # per-layer arrays: the largest is what memory needs
            value = max(value) if value else None
        setattr(info, attr, value)
    info.chat_template = _scalar(reader, "tokenizer.chat_template")
    info.license = _scalar(reader, "general.license")
    info.split_count = _scalar(reader, "split.count") or 1
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    info.vocab_size = len(tokens.data) if tokens is not None else None
    ftype = _scalar(reader, "general.file_type")
    if ftype is not None:
        try:
            info.file_type = LlamaFileType(ftype).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            info.file_type = str(ftype)
    info.parameters = sum(int(t.n_elements) for t in reader.tensors)
    info.tensor_types = _tensor_types(reader)
    # One answer to "which quant is this": the file type the converter declared (Q4_K_M keeps some
    # tensors in Q6_K or Q8_0, so the commonest tensor type can differ), else the commonest tensor type.
    info.quantization = info.file_type or next(iter(info.tensor_types), None)
    return info


def _tensor_types(reader) -> dict[str, int]:
    weight: dict[str, int] = {}
    for t in reader.tensors:
        weight[t.tensor_type.name] = weight.get(t.tensor_type.name, 0) + int(t.n_elements)
    return dict(sorted(weight.items(), key=lambda kv: -kv[1]))


def tensor_mix(types: dict[str, int]) -> str:
    """'Q4_1 79%, Q8_0 21%, F32 <1%': how the weights are stored."""
    total = sum(types.values()) or 1
    return ", ".join(f"{name} {share}%" if (share := round(100 * n / total)) else f"{name} <1%" for name, n in types.items())


def human_params(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.1f}B"
    if n >= 1e6:
        return f"{n / 1e6:.0f}M"
    return str(n)
