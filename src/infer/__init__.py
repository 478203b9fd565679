"""infer: run quantized GGUF language models locally, offline."""

__version__ = "0.1.0"
