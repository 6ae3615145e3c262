"""Serving: a TGI- and OpenAI-compatible HTTP server with continuous batching, LoRA adapters, task routes.

    tunebench serve (MODEL | --run DIR) [--adapter NAME=DIR ...] [--merge] [--engine batched|naive] ...
    tunebench export (MODEL | --run DIR) --target vllm|tgi --out DIR

    load_served(ModelOptions(...)) -> ServedModel            loading.py: model, tokenizer, adapters, run task
    build_state(served, ServerOptions(...)) -> ServerState   app.py: engine + metrics + request limits
    build_split_state(ModelOptions, ServerOptions) -> ...    client.py: the same, the engine in its own process
                                                             (core.py, over channel.py; `--frontend split`)
    create_app(state) -> FastAPI                             app.py: every route
    BackgroundServer(state).start().url                      server.py: the real server in a thread
    engine.submit(GenerationRequest) -> RequestHandle        engine.py: stream TokenEvents, then a Completion

Nothing heavy is imported here: the CLI imports `tunebench.serve.commands` at start-up.
"""
