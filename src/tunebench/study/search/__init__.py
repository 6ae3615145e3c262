"""Searching the fine-tuning space with Optuna instead of running a grid.

    tunebench run STUDY.yaml          (a study with a `search:` section)
      driver: one session (lock, results.db, one executor) for the whole search; while a slot is free and
              the budget allows: ask Optuna ── one cell (the defaults with the sampled values) ── submit it
              per-epoch validation ──> trial.report / should_prune ──> stop early
              a trial ends ── tell Optuna its objectives, read back from results.db ── ask the next one

Only the driver talks to Optuna; its journal (`search.journal`, beside results.db) is the search's memory,
results.db keeps every trial as an ordinary cell. `loop` runs the search, `predict` says what a study will
cost before it starts, `report` draws the front.
"""

JOURNAL = "search.journal"
