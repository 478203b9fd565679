"""Quant tags and split parts in GGUF file names (pure string logic, no network)."""

from __future__ import annotations

import re

# Longest first, so Q4_K_M wins over Q4_K and IQ4_XS over Q4.
_KNOWN = sorted(
    """IQ1_S IQ1_M IQ2_XXS IQ2_XS IQ2_S IQ2_M IQ3_XXS IQ3_XS IQ3_S IQ3_M IQ4_XS IQ4_NL
    Q2_K Q2_K_S Q2_K_L Q3_K Q3_K_S Q3_K_M Q3_K_L Q3_K_XL Q4_0 Q4_1 Q4_K Q4_K_S Q4_K_M Q4_K_L Q4_K_XL
    Q4_0_4_4 Q4_0_4_8 Q4_0_8_8 Q5_0 Q5_1 Q5_K Q5_K_S Q5_K_M Q5_K_L Q6_K Q6_K_L Q8_0 Q8_K_XL
    TQ1_0 TQ2_0 MXFP4 F16 BF16 F32 FP16 FP32""".split(),
    key=len, reverse=True,
)
_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.I)


def split_part(filename: str) -> tuple[int, int] | None:
    """(part, total) for 'name-00001-of-00003.gguf', else None."""
    m = _SPLIT.search(filename)
    return (int(m.group(1)), int(m.group(2))) if m else None


def split_prefix(filename: str) -> str:
    """'dir/name-00001-of-00003.gguf' -> 'dir/name': what every part of one split model shares."""
    return _SPLIT.sub("", filename)


def quant_of(filename: str) -> str | None:
    """The quant tag in a GGUF file name ('Llama-3.2-1B-Instruct-Q4_K_M.gguf' -> 'Q4_K_M')."""
    stem = _SPLIT.sub(".gguf", filename.rsplit("/", 1)[-1])
    stem = stem[: -len(".gguf")] if stem.lower().endswith(".gguf") else stem
    upper = stem.upper()
    for tag in _KNOWN:
        # a tag counts when it ends the name or stands between separators
        for m in re.finditer(re.escape(tag), upper):
            before = upper[m.start() - 1] if m.start() > 0 else "-"
            after = upper[m.end()] if m.end() < len(upper) else "-"
            if before in "-._ " and after in "-._ ":
                return "F16" if tag == "FP16" else "F32" if tag == "FP32" else tag
    return None
