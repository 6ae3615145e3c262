"""What a study will cost before it starts: GPU-hours and $ per cell and in total (`tunebench run --dry-run`).

    training seconds = training examples × tokens per example × epochs / tokens per second + fixed overhead
    evaluation seconds = evaluated examples × seconds per example
    $ = seconds / 3600 × the price table's hourly price (and its spot price, with the work a preemption redoes)

Every figure says where it came from: earlier runs of the same model (and method, and task) in this study's
results.db first; else the project's own GPU benchmarks (benchmarks/results, built in below); else the data
itself (tokens per example, counted with the model's tokenizer). A figure nobody measured is shown as
unknown, never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean
from typing import Any

from tunebench.config.schema import PROMPT_METHODS, CellConfig

# Training tokens/s measured by benchmarks/train_throughput.py on one H200 (benchmarks/results/2026-11-28-h200-
# train-1gpu.jsonl, ...-qlora-7b.jsonl: the `fast` recipe cases): (model, method, instance) -> tokens/s.
BENCHMARKED_TPS = {
    ("redpajama-3b", "lora", "h200"): 20271.3,
    ("redpajama-3b", "qlora", "h200"): 4352.1,
    ("redpajama-7b", "lora", "h200"): 12475.1,
}
BENCHMARK_SOURCE = "benchmarks/results/2026-11-28-h200-train-*.jsonl"
# A preempted spot run: a new machine, the model loaded again, the checkpoint read back. An assumption (no
# measurement behind it), stated with every spot figure.
RESTART_S = 120.0
DEFAULT_CHECKPOINTS = 10   # the trainer saves every 1/10 of its steps (save_steps unset) and at each epoch end


@dataclass
class Figures:
    """What earlier runs in a study directory measured, by (model, method) and (model, task, method)."""

    tps: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    overhead_s: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    tokens_per_example: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    eval_s_per_example: dict[tuple[str, str, str], list[float]] = field(default_factory=dict)
    eval_overhead_s: dict[tuple[str, str, str], list[float]] = field(default_factory=dict)
    train_points: dict[tuple[str, str], list[tuple[float, float]]] = field(default_factory=dict)   # (tokens, s)
    eval_points: dict[tuple[str, str, str], list[tuple[float, float]]] = field(default_factory=dict)  # (n, s)
    instance: str | None = None

    @classmethod
    def of(cls, study_dir: Path | None) -> Figures:
        from tunebench.study.store import Store

        out = cls()
        if study_dir is None or not (Path(study_dir) / "results.db").exists():
            return out
        with Store.open_readonly(study_dir) as store:
            rows = store.rows(
                "SELECT c.model, c.method, c.task, k.stage, k.wall_seconds, k.tokens, k.tokens_per_second, "
                "k.instance, s.detail, "
                "(SELECT value FROM metrics m WHERE m.cell_id = c.cell_id AND m.stage = 'train' AND "
                " m.name = 'train_examples') AS examples, "
                "(SELECT value FROM metrics m WHERE m.cell_id = c.cell_id AND m.stage = 'train' AND "
                " m.name = 'epochs_done') AS epochs, "
                "(SELECT MAX(n) FROM metrics m WHERE m.cell_id = c.cell_id AND m.stage = 'eval') AS n "
                "FROM costs k JOIN cells c ON c.cell_id = k.cell_id "
                "JOIN stages s ON s.cell_id = k.cell_id AND s.stage = k.stage WHERE s.status = 'done'")
        for r in rows:
            if r["stage"] == "train" and not (r["detail"] or "").startswith("epoch "):   # not a shared checkpoint
                key = (r["model"], r["method"])
                if r["tokens_per_second"] and r["tokens"]:
                    out.train_points.setdefault(key, []).append((r["tokens"], r["wall_seconds"]))
                    out.tps.setdefault(key, []).append(r["tokens_per_second"])
                    out.overhead_s.setdefault(key, []).append(max(0.0, r["wall_seconds"] - r["tokens"] /
                                                                  r["tokens_per_second"]))
                if r["tokens"] and r["examples"] and r["epochs"]:
                    out.tokens_per_example.setdefault((r["model"], r["task"]), []).append(
                        r["tokens"] / (r["examples"] * r["epochs"]))
            elif r["stage"] == "eval" and r["n"]:
                # the scoring loop's share scales with the examples; loading the model does not
                kind = "prompt" if r["method"] in PROMPT_METHODS else "trained"
                out.eval_points.setdefault((r["model"], r["task"], kind), []).append((r["n"], r["wall_seconds"]))
                scoring = r["tokens"] / r["tokens_per_second"] if r["tokens"] and r["tokens_per_second"] else \
                    r["wall_seconds"]
                out.eval_s_per_example.setdefault((r["model"], r["task"], kind), []).append(scoring / r["n"])
                out.eval_overhead_s.setdefault((r["model"], r["task"], kind), []).append(
                    max(0.0, r["wall_seconds"] - scoring))
            out.instance = out.instance or r["instance"]
        return out


def fitted(points: list[tuple[float, float]], x: float) -> float | None:
    """seconds = a + b·x by least squares, when earlier runs of at least two sizes measured it: small runs
    are dominated by what does not scale (loading, the first steps), large ones by what does."""
    xs = {px for px, _ in points}
    if len(xs) < 2:
        return None
    mx, my = mean(px for px, _ in points), mean(py for _, py in points)
    b = sum((px - mx) * (py - my) for px, py in points) / sum((px - mx) ** 2 for px, _ in points)
    if b <= 0:
        return None
    return max(0.0, my - b * mx) + b * x


@dataclass
class CellPrediction:
    cell_id: str
    train_examples: int = 0
    train_tokens: float | None = None      # × epochs
    train_s: float | None = None
    eval_examples: int = 0
    eval_s: float | None = None
    instance: str = ""
    price_per_hour: float = 0.0
    spot_price_per_hour: float | None = None
    sources: list[str] = field(default_factory=list)
    shares_training: bool = False
    trains: bool = True                     # False: a prompting cell, evaluation only
    checkpoint_s: float | None = None      # training seconds between checkpoints: what a preemption can lose
    preemptions_per_hour: float = 0.0       # cost.spot_preemptions_per_hour (an assumption)

    @property
    def seconds(self) -> float | None:
        if self.eval_s is None or (self.trains and self.train_s is None and not self.shares_training):
            return None
        return (0.0 if self.shares_training else self.train_s or 0.0) + self.eval_s

    @property
    def usd(self) -> float | None:
        s = self.seconds
        return None if s is None else s / 3600 * self.price_per_hour

    @property
    def redone_s(self) -> float | None:
        """Seconds a spot run is expected to redo: preemptions at the assumed rate, each losing on average half
        the work since the last checkpoint (evaluation keeps none: half of it) plus a restart."""
        if self.seconds is None:
            return None
        train = 0.0 if self.shares_training else self.train_s or 0.0
        evaluation = self.eval_s or 0.0
        interval = self.checkpoint_s if self.checkpoint_s is not None else train
        rate = self.preemptions_per_hour / 3600
        return rate * train * (interval / 2 + RESTART_S) + rate * evaluation * (evaluation / 2 + RESTART_S)

    @property
    def spot_usd(self) -> float | None:
        """Spot: the spot price over the run and the work its preemptions redo; None without a sourced price."""
        s, redone = self.seconds, self.redone_s
        if s is None or redone is None or self.spot_price_per_hour is None:
            return None
        return (s + redone) / 3600 * self.spot_price_per_hour


def model_key(cfg: CellConfig) -> str:
    return cfg.model.name


def data_counts(cfg: CellConfig, tokenizer: Any) -> tuple[int, int, float | None]:
    """Training examples, evaluated examples, and data tokens per training example (input + answer)."""
    from tunebench.data.lengths import token_lengths
    from tunebench.data.loader import load_task_data

    data = load_task_data(cfg.data, tokenizer, cfg.eval.split)
    n_eval = min(len(data.test), cfg.eval.limit) if cfg.eval.limit else len(data.test)
    per_example = None
    if tokenizer is not None and data.train:
        lengths = token_lengths(tokenizer, [ex.input + "\n" + ex.target for ex in data.train])
        per_example = sum(lengths) / len(lengths)
    return len(data.train), n_eval, per_example


def predict_cell(cfg: CellConfig, cid: str, figures: Figures, *, shares_training: bool = False,
                 tokenizers: dict[str, Any] | None = None) -> CellPrediction:
    from tunebench.cost import lookup, price_table

    tokenizers = tokenizers if tokenizers is not None else {}
    trained = cfg.method not in PROMPT_METHODS
    model = model_key(cfg)
    instance = cfg.cost.instance or figures.instance or "cpu-2core"
    price = lookup(instance) if instance in price_table() else None
    p = CellPrediction(cid, instance=instance, price_per_hour=cfg.cost.price_per_hour or (price.price_per_hour
                       if price else 0.0), spot_price_per_hour=price.spot_price_per_hour if price else None,
                       shares_training=shares_training, preemptions_per_hour=cfg.cost.spot_preemptions_per_hour,
                       trains=trained)
    known_tokens = figures.tokens_per_example.get((model, cfg.data.task))
    need_tokenizer = (trained and not known_tokens) or cfg.data.cleaning.max_input_tokens is not None
    tokenizer = None
    try:
        if need_tokenizer:
            if model not in tokenizers:
                from tunebench.data.commands import tokenizer_of

                tokenizers[model] = tokenizer_of(cfg.model)[1]
            tokenizer = tokenizers[model]
        key = ("data", model if tokenizer is not None else "", cfg.data.model_dump_json(), cfg.eval.split,
               cfg.eval.limit)
        if key not in tokenizers:   # the data of a cell is read once per study, whatever its cell count
            tokenizers[key] = data_counts(cfg, tokenizer)
        n_train, p.eval_examples, data_tokens = tokenizers[key]
    except Exception as err:  # a hub model or data set out of reach (offline): say so, predict nothing
        p.sources.append(f"the data or tokenizer cannot be read here ({type(err).__name__})")
        return p
    kind = "trained" if trained else "prompt"
    per_eval = figures.eval_s_per_example.get((model, cfg.data.task, kind))
    eval_fit = fitted(figures.eval_points.get((model, cfg.data.task, kind), []), p.eval_examples)
    if eval_fit is not None:
        p.eval_s = eval_fit
        p.sources.append("eval s: fitted to earlier runs")
    elif per_eval:
        p.eval_s = p.eval_examples * mean(per_eval) + mean(figures.eval_overhead_s.get((model, cfg.data.task, kind),
                                                                                     [0.0]))
        p.sources.append("eval s/example: earlier runs")
    if not trained:
        return p
    p.train_examples = n_train
    epochs = cfg.training.epochs or 1
    if known_tokens:
        per_example, p.sources = mean(known_tokens), [*p.sources, "tokens/example: earlier runs"]
    else:
        per_example = data_tokens
        p.sources.append("tokens/example: the data (template not counted)")
    if per_example is not None:
        p.train_tokens = n_train * per_example * epochs
    tps = figures.tps.get((model, cfg.method))
    overhead = mean(figures.overhead_s.get((model, cfg.method), [0.0]))
    if tps:
        p.sources.append("tokens/s: earlier runs")
        tps_value = mean(tps)
    elif (model, cfg.method, instance) in BENCHMARKED_TPS:
        p.sources.append(f"tokens/s: {BENCHMARK_SOURCE}")
        tps_value = BENCHMARKED_TPS[(model, cfg.method, instance)]
    else:
        tps_value = None
        p.sources.append(f"tokens/s: unknown for {model} {cfg.method} on {instance} (run one cell first)")
    train_fit = fitted(figures.train_points.get((model, cfg.method), []), p.train_tokens or 0.0)
    if train_fit is not None and p.train_tokens is not None:
        p.train_s = train_fit
        p.sources[-1] = "train s: fitted to earlier runs"
    elif tps_value and p.train_tokens is not None:
        p.train_s = p.train_tokens / tps_value + overhead
    if p.train_s is not None:
        p.checkpoint_s = p.train_s * checkpoint_share(cfg, n_train)
    return p


def checkpoint_share(cfg: CellConfig, n_train: int) -> float:
    """The share of a training run between two checkpoints: every save_steps steps (default 1/10 of them) and
    at each epoch end, whichever comes first (tunebench.train.engine, EpochCallback)."""
    epochs = cfg.training.epochs or 1
    share = 1.0 / max(DEFAULT_CHECKPOINTS, epochs)
    if cfg.training.save_steps and cfg.training.batch_size and n_train:
        steps = -(-n_train // (cfg.training.batch_size * (cfg.training.gradient_accumulation or 1))) * epochs
        share = min(1.0 / epochs, cfg.training.save_steps / max(1, steps))
    return share


@dataclass
class StudyPrediction:
    cells: list[CellPrediction]
    epochs: dict[str, int]

    def total(self, spot: bool = False) -> float | None:
        """$ of every cell, on-demand or spot; None when one cell's figure (or its spot price) is unknown."""
        values = [c.spot_usd if spot else c.usd for c in self.cells]
        return None if any(v is None for v in values) else sum(v for v in values if v is not None)

    @property
    def hours(self) -> float | None:
        values = [c.seconds for c in self.cells]
        return None if any(v is None for v in values) else sum(v for v in values if v is not None) / 3600


def predict_cells(cells: list[Any], study_dir: Path | None, figures: Figures | None = None) -> StudyPrediction:
    """Cells of a study (tunebench.config.study.Cell), epochs groups training once (tunebench.study.plan);
    the figures are read from `study_dir`'s results.db unless given."""
    from tunebench.study.plan import plan

    figures = figures if figures is not None else Figures.of(study_dir)
    shared = {cid for unit in plan(cells) for cid in unit.epoch_of}
    tokenizers: dict[str, Any] = {}
    out = [predict_cell(c.config, c.id, figures, shares_training=c.id in shared, tokenizers=tokenizers)
           for c in cells]
    return StudyPrediction(out, {c.id: c.config.training.epochs or 1 for c in cells})


def print_prediction(prediction: StudyPrediction, console: Any, *, scale: float = 1.0, title: str = "") -> None:
    """A table per cell, and the total (× `scale`: a search budget's trials over the cells predicted)."""
    from rich.table import Table

    table = Table(title=title or "predicted cost before launch", title_justify="left")
    for column in ("cell", "train tokens", "train", "eval", "GPU-h", "$ on-demand", "$ spot", "from"):
        table.add_column(column, overflow="fold")

    def secs(v: float | None) -> str:
        return "?" if v is None else f"{v:.0f} s"

    for c in prediction.cells:
        spot = c.spot_usd
        table.add_row(c.cell_id, "shared" if c.shares_training else f"{c.train_tokens:,.0f}" if c.train_tokens
                      else "-" if not c.train_examples else "?",
                      "shared" if c.shares_training else secs(c.train_s) if c.train_examples else "-",
                      secs(c.eval_s), "?" if c.seconds is None else f"{c.seconds / 3600:.4f}",
                      "?" if c.usd is None else f"{c.usd:.4f}",
                      ("no spot price" if c.spot_price_per_hour is None else "?") if spot is None else f"{spot:.4f}",
                      "; ".join(c.sources))
    console.print(table)
    for line in summary_lines(prediction, scale):
        console.print(line, highlight=False)


def summary_lines(prediction: StudyPrediction, scale: float = 1.0) -> list[str]:
    """The totals, on-demand and spot, and what the spot figure assumes (or why there is none)."""
    from tunebench.cost import price_table

    total, spot_total, hours = prediction.total(), prediction.total(spot=True), prediction.hours
    instances = sorted({c.instance for c in prediction.cells}) or ["?"]
    lines = [f"predicted total: {'?' if hours is None else f'{hours * scale:.4f}'} GPU-hours · "
             f"${'?' if total is None else f'{total * scale:.4f}'} on-demand ({', '.join(instances)})"]
    unpriced = sorted({c.instance for c in prediction.cells if c.spot_price_per_hour is None})
    if unpriced:
        with_spot = [name for name, p in price_table().items() if p.spot_price_per_hour is not None]
        lines.append(f"spot: none — the price table has no sourced spot price for {', '.join(unpriced)} "
                     f"(entries with one: {', '.join(with_spot)}; tunebench prices)")
    elif spot_total is not None:
        redone = sum(c.redone_s or 0.0 for c in prediction.cells)
        rates = sorted({c.preemptions_per_hour for c in prediction.cells})
        lines.append(f"spot: ${spot_total * scale:.4f}, including {redone * scale:.0f} s of work redone after "
                     f"preemptions — assumed {'/'.join(f'{r:g}' for r in rates)} preemption(s) per hour "
                     "(cost.spot_preemptions_per_hour, an assumption: no cloud publishes a rate), each losing "
                     "half a checkpoint interval (every 1/10 of the training steps or each epoch, whichever is "
                     f"sooner; training.save_steps) and {RESTART_S:.0f} s to restart (assumed)")
        sources = sorted({f"{price_table()[i].spot_source} ({price_table()[i].spot_date})" for i in instances
                          if i in price_table()})
        lines += [f"  spot price: {s}" for s in sources]
    return lines


def sample_space(study: Any, n: int = 16) -> list[Any]:
    """n configurations drawn at random from a search space (an in-memory Optuna study: no journal)."""
    from tunebench.study.search.loop import quiet_optuna, suggest, trial_cell

    optuna = quiet_optuna()
    search = study.config.search
    draws = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=search.seed))
    base = study.cells[0].config.model_dump(mode="json")
    cells = {}
    for _ in range(n):
        trial = draws.ask()
        cell = trial_cell(base, suggest(trial, search), str(study.path))
        cells.setdefault(cell.id, cell)
        draws.tell(trial, 0.0)
    return list(cells.values())


def print_search_prediction(study: Any, study_dir: Path, console: Any) -> None:
    search = study.config.search
    cells = sample_space(study)
    prediction = predict_cells(cells, study_dir)
    trials = search.budget.trials
    mean_usd = (prediction.total() or 0.0) / len(cells) if prediction.total() is not None else None
    print_prediction(prediction, console, scale=(trials / len(cells)) if trials else 1.0,
                     title=f"predicted cost of {len(cells)} configurations drawn from the space")
    if trials is None:
        console.print("(the totals are for these draws; the budget gives no trial count)")
    elif mean_usd is not None:
        console.print(f"{trials} trials × ${mean_usd:.4f} mean per trial (before pruning, which only lowers it)",
                      highlight=False)
