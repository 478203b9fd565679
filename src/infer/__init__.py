"""infer: run quantized GGUF language models locally, offline."""

import os

__version__ = "0.1.0"

# numpy (imported by gguf and llama_cpp) starts OpenBLAS worker threads that infer never uses; each one is a
# thread where the kernel may deliver a Ctrl-C meant for the main thread, which then never wakes a chat
# waiting at its prompt. One BLAS thread means none of them. (The engine's own threads block SIGINT.)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
