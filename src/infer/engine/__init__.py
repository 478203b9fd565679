"""The engine: the only package that imports llama_cpp (lazily, inside the functions that need it).

    events.py    Text, Done, Usage, Timings: the values every caller sees
    sampling.py  Sampling parameters, JSON grammars, stop strings
    native.py    llama.cpp's libraries: import, logging, Ctrl-C in C code, ggml's devices and weight buffers
    model.py     load, tokenize, contexts sized to the need
    templates.py chat templates
    backend.py   the context the scheduler drives (one batch, n sequences), the draft model's context
    embed.py     embeddings through a second, pooled context
    scheduler.py continuous batching: every request goes through it
    speculate.py prompt-lookup speculative decoding
"""

from infer.engine.events import Done, Event, Failed, Text, Timings, TokenLogprob, Usage
from infer.engine.backend import KV_TYPES
from infer.engine.model import LoadOptions, Model, Vocab
from infer.engine.native import Device, devices, supports_gpu_offload, system_info
from infer.engine.sampling import Sampling, StopMatcher, json_grammar
from infer.engine.speculate import Speculation

__all__ = ["Done", "Event", "Failed", "Text", "Timings", "TokenLogprob", "Usage", "KV_TYPES", "Device", "LoadOptions",
           "Model", "Vocab", "devices", "supports_gpu_offload", "system_info", "Sampling", "StopMatcher", "json_grammar",
           "Speculation"]
