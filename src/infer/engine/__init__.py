"""The engine: the only package that imports llama_cpp (lazily, inside the functions that need it).

    events.py    Text, Done, Usage, Timings: the values every caller sees
    sampling.py  Sampling parameters, JSON grammars, stop strings
    model.py     load, tokenize, chat templates, the context and its backend for the scheduler
    scheduler.py continuous batching: every request goes through it
    speculate.py prompt-lookup speculative decoding
"""

from infer.engine.events import Done, Event, Failed, Text, Timings, TokenLogprob, Usage
from infer.engine.model import (
    KV_TYPES, Device, LoadOptions, Model, Vocab, devices, supports_gpu_offload, system_info,
)
from infer.engine.sampling import Sampling, StopMatcher, json_grammar
from infer.engine.speculate import Speculation

__all__ = ["Done", "Event", "Failed", "Text", "Timings", "TokenLogprob", "Usage", "KV_TYPES", "Device", "LoadOptions",
           "Model", "Vocab", "devices", "supports_gpu_offload", "system_info", "Sampling", "StopMatcher", "json_grammar",
           "Speculation"]
