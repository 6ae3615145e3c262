"""Load testing and inference cost: open-loop rate sweeps against TGI, OpenAI or naive endpoints.

    spec.py            durations, rates and sweeps, the SLO, the request bound
    protocols.py       the TGI / OpenAI / naive wire formats (bodies, replies, server-sent events)
    engine.py          the open-loop sender (aiohttp): requests leave on schedule, latency from the schedule
    metrics.py         per-rate metrics and mean ± std over repetitions
    search.py          the maximum sustainable rate: sweep, then bisection
    inference_cost.py  cost per 1K tokens / requests with the original study's formula
    runner.py          one load test end to end: loadtest.json, requests.csv, plots
    bench.py           `tunebench serve` per engine, load-tested and compared
    stage.py           run_serve_loadtest(cell, run, model_ref): the study runner's serve + load-test stage
    commands.py        `tunebench loadtest` and `tunebench bench serve`

Nothing heavy is imported here: the CLI imports commands.py for every command.
"""
