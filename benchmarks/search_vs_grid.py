"""Search against grid: what a search finds with a fraction of the grid's cost, on a grid recorded once.

    python benchmarks/search_vs_grid.py [--model tiny|embedded] [--out DIR] [--seeds 20] [--trials 12] [--live]

1. The grid (learning rate × LoRA rank × epochs = 48 cells; cells differing only in epochs share one
   training run and evaluate its per-epoch checkpoints; every epoch's validation loss is recorded) runs once
   through `run_study`, recording every cell's accuracy and cost in results.db. `--model tiny` (the default):
   the 2-layer Llama of tests/conftest.py, seconds a cell, which barely learns (it tests the machinery).
   `--model embedded`: the project's embedded SmolLM2-135M-Instruct on the built-in classification sample
   (16 training posts, 2 per topic, cut to 32 tokens; 48 test posts), sized for about half an hour on 2 CPU
   cores, where the learning rate and rank matter.
2. The search is replayed over the recorded grid: Optuna's TPE (and random sampling, the baseline) asks
   for `--trials` configurations; each is answered from results.db. Per seed: regret (the grid's best
   accuracy minus that of the trial the search would pick) and the fraction of the grid's $ spent (each
   distinct cell once). Median and worst over the seeds.
3. `--live`: one real search (tunebench.study.search.loop.run_search) over the same space and budget,
   confirming the replay with a run that trains every trial.

Prints one JSON line. `grid_run_s` is the recorded grid's wall time (its first stage started to its last
finished, read from results.db); `grid_reused_s` is this invocation's grid step (the whole run when nothing was
recorded yet, seconds when it is reused); `per_epoch_validations` counts the eval_loss points of the grid's
training runs (metrics.jsonl). $ are wall seconds × the price: on a shared machine they carry its load.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RANKS = [2, 4, 8]
EPOCHS = [1, 2, 3, 4]
# Per model: the learning rates of the grid, and the study's defaults. The tiny model needs large rates to
# move at all; the embedded one learns the 8 topics from 16 posts at 1e-3 and is spread out around it.
PROFILES: dict[str, dict[str, object]] = {
    "tiny": {
        "lrs": [1e-4, 1e-3, 5e-3, 2e-2],
        "label": "tiny-llama (tests/conftest.py, 2 layers, hidden 32)",
        "defaults": """  data: {source: "builtin:classification", task: classification, train_count: 32}
  eval: {limit: 24, bootstrap: 50, max_new_tokens: 8}
  training: {save_steps: 1000}
""",
    },
    "embedded": {
        "lrs": [1e-4, 3e-4, 1e-3, 3e-3],
        "label": "smollm2-135m-instruct (embedded, dequantized Q4_1, float32 on CPU)",
        "defaults": """  data: {source: "builtin:classification", task: classification, seed: 0, train_count: 16,
          validation_size: 0.1, cleaning: {max_input_tokens: 32}}
  eval: {limit: 48, bootstrap: 200, batch_size: 48}
  training: {tokens_per_batch: 512, save_steps: 1000, eval_each_epoch: true}
  cost: {instance: cpu-2core}
""",
    },
}
LRS: list[float] = PROFILES["tiny"]["lrs"]   # type: ignore[assignment]   # set by main() from --model


def tiny_model(out: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import build_tiny_model, train_tokenizer

    model = out / "tiny-llama"
    if not (model / "config.json").exists():
        build_tiny_model("llama", train_tokenizer(out / "tokenizer"), model)
    return model


def study_text(model: Path | str, name: str, body: str, profile: str = "tiny") -> str:
    defaults = PROFILES[profile]["defaults"]
    return f"""name: {name}
defaults:
  model: {{name: "{model}"}}
  method: lora
{defaults}{body}"""


def grid_body() -> str:
    return f"""experiments:
  - sweep:
      training.learning_rate: {LRS}
      lora.r: {RANKS}
      training.epochs: {EPOCHS}
"""


def search_body(trials: int, seed: int) -> str:
    return f"""search:
  parameters:
    training.learning_rate: {{choices: {LRS}}}
    lora.r: {{choices: {RANKS}}}
    training.epochs: {{choices: {EPOCHS}}}
  objectives: [{{metric: accuracy}}]
  sampler: tpe
  seed: {seed}
  budget: {{trials: {trials}}}
"""


def recorded(db: Path) -> dict[tuple[float, int, int], tuple[float, float]]:
    """(learning rate, rank, epochs) -> (accuracy, $ of the cell: its training share and its evaluation)."""
    out = {}
    with sqlite3.connect(db) as conn:
        for params, acc, usd in conn.execute(
                "SELECT c.params, m.value, (SELECT SUM(usd) FROM costs k WHERE k.cell_id = c.cell_id) FROM cells c "
                "JOIN metrics m ON m.cell_id = c.cell_id AND m.stage = 'eval' AND m.name = 'accuracy'"):
            p = json.loads(params)
            out[(p["training"]["learning_rate"], p["lora"]["r"], p["training"]["epochs"])] = (acc, usd or 0.0)
    return out


def replay(grid: dict[tuple[float, int, int], tuple[float, float]], sampler_name: str, seed: int,
           trials: int) -> tuple[float, float]:
    """(regret, fraction of the grid's $) of one search answered from the recorded grid."""
    from tunebench.study.search.loop import quiet_optuna

    optuna = quiet_optuna()
    sampler = (optuna.samplers.TPESampler(seed=seed, constant_liar=True, n_startup_trials=min(10, max(2, trials // 4)))
               if sampler_name == "tpe" else optuna.samplers.RandomSampler(seed=seed))
    study = optuna.create_study(direction="maximize", sampler=sampler)
    seen: set[tuple[float, int, int]] = set()
    for _ in range(trials):
        t = study.ask()
        key = (t.suggest_categorical("training.learning_rate", LRS), t.suggest_categorical("lora.r", RANKS),
               t.suggest_categorical("training.epochs", EPOCHS))
        seen.add(key)
        study.tell(t, grid[key][0])
    best = max(v[0] for v in grid.values())
    total = sum(v[1] for v in grid.values())
    return best - study.best_value, sum(grid[k][1] for k in seen) / total


def summary(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 4), "worst": round(max(values), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(PROFILES), default="tiny")
    parser.add_argument("--out", type=Path, default=None, help="default: runs/search-vs-grid[-embedded]")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--live", action="store_true", help="also run one real search (seed 0)")
    args = parser.parse_args()

    import torch
    from rich.console import Console

    from tunebench.config.study import load_study
    from tunebench.study.runner import run_study

    global LRS
    LRS = PROFILES[args.model]["lrs"]   # type: ignore[assignment]
    args.out = args.out or ROOT / "runs" / ("search-vs-grid" + ("" if args.model == "tiny" else f"-{args.model}"))
    torch.set_num_threads(1 if args.model == "tiny" else 2)
    args.out.mkdir(parents=True, exist_ok=True)
    model: Path | str = tiny_model(args.out) if args.model == "tiny" else "smollm2-135m-instruct"
    grid_file = args.out / "grid.yaml"
    grid_file.write_text(study_text(model, "grid", grid_body(), args.model))
    started = time.perf_counter()
    grid_study = load_study(grid_file)
    run_study(grid_study, args.out / "grid", console=Console(quiet=True), yes=True)   # reused when recorded
    grid_s = time.perf_counter() - started
    grid = recorded(args.out / "grid" / "results.db")
    with sqlite3.connect(args.out / "grid" / "results.db") as conn:
        # the recorded run's own wall time (first stage started to last finished): a rerun reuses the grid
        first, last = conn.execute("SELECT MIN(started), MAX(finished) FROM stages").fetchone()
        epoch_points = sum(1 for f in (args.out / "grid").glob("*/train/metrics.jsonl")
                           for line in f.read_text().splitlines() if '"eval_loss"' in line)
    from datetime import datetime

    span_s = (datetime.fromisoformat(last) - datetime.fromisoformat(first)).total_seconds()
    result: dict[str, object] = {
        "benchmark": "search_vs_grid", "model": PROFILES[args.model]["label"],
        "grid_cells": len(grid), "grid_trainings": len(LRS) * len(RANKS), "grid_run_s": round(span_s, 1),
        "grid_reused_s": round(grid_s, 1), "per_epoch_validations": epoch_points,
        "grid_best_accuracy": max(v[0] for v in grid.values()),
        "grid_usd": round(sum(v[1] for v in grid.values()), 6), "trials": args.trials, "seeds": args.seeds,
        "distinct_accuracies": len({v[0] for v in grid.values()}),
    }
    for name in ("tpe", "random"):
        runs = [replay(grid, name, seed, args.trials) for seed in range(args.seeds)]
        result[f"{name}_regret"] = summary([r for r, _ in runs])
        result[f"{name}_grid_cost_fraction"] = summary([f for _, f in runs])
    if args.live:
        from tunebench.study.search.loop import open_search, run_search

        live_dir = args.out / "live"
        live_file = args.out / "live.yaml"
        live_file.write_text(study_text(model, "live", search_body(args.trials, 0), args.model))
        study = load_study(live_file)
        started = time.perf_counter()
        run_search(study, live_dir, console=Console(quiet=True))
        osearch = open_search(study, live_dir)
        live_usd = sum(sum(v or 0.0 for (v,) in sqlite3.connect(live_dir / "results.db").execute(
            "SELECT usd FROM costs WHERE cell_id = ?", (cid,))) for cid in
            {t.user_attrs["cell_id"] for t in osearch.trials if "cell_id" in t.user_attrs})
        result["live"] = {"best_accuracy": osearch.best_value, "regret": round(result["grid_best_accuracy"] -
                                                                               osearch.best_value, 4),
                          "usd": round(live_usd, 6), "grid_cost_fraction": round(live_usd / result["grid_usd"], 4),
                          "run_s": round(time.perf_counter() - started, 1),
                          "replay_regret_seed0": round(replay(grid, "tpe", 0, args.trials)[0], 4)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
