"""`infer serve`: one local server for the OpenAI and the Ollama APIs over the engine's scheduler.

    app.py      the ASGI app: routes, auth, limits, access log, lifespan
    models.py   the loaded models: on-demand load from the store, keep-alive and LRU unload
    openai.py   OpenAI request bodies <-> engine requests and events (pure translation)
    ollama.py   Ollama request bodies <-> engine requests and events (pure translation)
    metrics.py  Prometheus metrics
    bridge.py   engine handles -> asyncio: events through a per-request queue, cancel on disconnect

Imported only by `infer serve` (FastAPI, uvicorn and prometheus-client are never loaded by other commands).
"""
