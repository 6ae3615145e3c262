"""Searching the fine-tuning space with Optuna instead of running a grid.

    tunebench run STUDY.yaml          (a study with a `search:` section)
      driver: ask Optuna for k trials ── each becomes one cell (the defaults with the sampled values)
              run_study(those cells) ── per-epoch validation ──> trial.report / should_prune ──> stop early
              tell Optuna each trial's objectives, read back from results.db

Only the driver talks to Optuna; its journal (`search.journal`, beside results.db) is the search's memory,
results.db keeps every trial as an ordinary cell. `loop` runs the search, `predict` says what a study will
cost before it starts, `report` draws the front.
"""

JOURNAL = "search.journal"
