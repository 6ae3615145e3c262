"""The `search:` section of a study: a space over cell fields, objectives, a sampler, a pruner and a budget.

    search:
      parameters:
        lora.r: {type: int, low: 2, high: 32, log: true}
        training.learning_rate: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}
        lora.dropout: {type: float, low: 0.0, high: 0.3, step: 0.05}
        model.name: {choices: [smollm2-135m-instruct, smollm2-360m-instruct]}
      objectives: [{metric: accuracy}, {metric: train_cost_usd}]    # directions default per metric
      sampler: tpe            # tpe | gp | random | nsga2 | motpe
      pruner: median          # median | asha | successive_halving | none (single objective only)
      budget: {trials: 20, usd: 5.0, wall_seconds: 3600}

The structure is checked by pydantic (unknown keys get a did-you-mean); what depends on the rest of the
study (a field that exists, a range that is not empty, pruning with one objective) by `check_search`, so
every problem names its field and the fix.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tunebench.errors import UserError, did_you_mean

# Metrics an evaluation records (eval stage), plus the validation loss training records (train stage).
QUALITY_METRICS = {"accuracy": "maximize", "macro_f1": "maximize", "rouge1": "maximize", "rouge2": "maximize",
                   "rougeL": "maximize", "rougeLsum": "maximize", "eval_loss": "minimize"}
COST_METRICS = {"train_cost_usd": "minimize", "inference_usd_per_1k_tokens": "minimize"}
SAMPLERS = ("tpe", "gp", "random", "nsga2", "motpe")
MULTI_SAMPLERS = ("nsga2", "motpe", "random", "tpe")   # tpe with several objectives is MOTPE
PRUNERS = ("median", "asha", "successive_halving", "none")


class Part(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Parameter(Part):
    type: Literal["int", "float", "categorical"] | None = Field(
        None, description="None: categorical when choices are given, int when both bounds are integers, else float")
    low: int | float | None = None    # ints stay ints (pydantic's smart union): an int parameter
    high: int | float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)
    choices: list[Any] | None = None

    def kind(self) -> str:
        if self.type:
            return self.type
        if self.choices is not None:
            return "categorical"
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (self.low, self.high))
        return "int" if ints and (self.step is None or float(self.step).is_integer()) else "float"


class Objective(Part):
    metric: str
    direction: Literal["maximize", "minimize"] | None = None

    def resolved_direction(self) -> str:
        return self.direction or {**QUALITY_METRICS, **COST_METRICS}.get(self.metric, "maximize")


class Pruner(Part):
    name: str = "none"
    prune_on: str = Field("eval_loss", description="the per-epoch validation metric training reports")
    n_startup_trials: int = Field(2, ge=0, description="median: trials that finish before any is pruned")
    warmup_epochs: int = Field(0, ge=0, description="median: epochs of each trial never pruned")
    min_epochs: int = Field(1, ge=1, description="asha: the first rung")
    reduction_factor: int = Field(3, ge=2, description="asha: keep 1 in this many at each rung")


class Budget(Part):
    trials: int | None = Field(None, ge=1)
    usd: float | None = Field(None, gt=0)
    wall_seconds: float | None = Field(None, gt=0)


class SearchConfig(Part):
    parameters: dict[str, Parameter]
    objectives: list[Objective] = Field(default_factory=lambda: [Objective(metric="accuracy")])
    sampler: str = "tpe"
    pruner: Pruner = Field(default_factory=Pruner, description="a name, or a mapping with its settings")
    budget: Budget = Field(default_factory=Budget)
    seed: int = 0
    concurrency: int | None = Field(None, ge=1, description="trials run at once; None: 1 inline, the GPU count "
                                    "on Ray")

    @field_validator("pruner", mode="before")
    @classmethod
    def _pruner_by_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    def pruning(self) -> Pruner:
        return self.pruner

    def directions(self) -> list[str]:
        return [o.resolved_direction() for o in self.objectives]


def check_search(search: SearchConfig, where: str, task: str) -> None:
    """The checks pydantic cannot make: fields of a cell, ranges, the sampler, objectives and pruning together."""
    at = f"{where}: search"
    if not search.parameters:
        raise UserError(f"{at}.parameters is empty", "give at least one field, e.g. lora.r: {low: 2, high: 32}")
    for key, p in search.parameters.items():   # that each key is a cell field, tunebench.config.study checked
        here = f"{at}.parameters.{key}"
        kind = p.kind()
        if kind == "categorical":
            if not p.choices:
                raise UserError(f"{here}: a categorical parameter needs a non-empty list of choices",
                                f"e.g. {key}: {{choices: [a, b]}}")
            continue
        if p.low is None or p.high is None:
            raise UserError(f"{here}: a {kind} parameter needs low and high",
                            f"e.g. {key}: {{low: 1, high: 10}}, or give choices: [...]")
        if p.low > p.high or (p.low == p.high and kind == "float"):
            raise UserError(f"{here}: the range low={p.low:g} .. high={p.high:g} is empty",
                            "give a low below high")
        if p.log and p.low <= 0:
            raise UserError(f"{here}: log: true needs positive bounds, got low={p.low:g}",
                            "give a low above 0, or drop log: true")
        if p.log and p.step is not None:
            raise UserError(f"{here}: log and step cannot be combined (Optuna refuses them together)",
                            "drop one of log: true and step")
    if search.sampler not in SAMPLERS:
        raise UserError(f"{at}.sampler = {search.sampler!r} is not a sampler", did_you_mean(search.sampler, SAMPLERS))
    pruner = search.pruning()
    if pruner.name not in PRUNERS:
        raise UserError(f"{at}.pruner = {pruner.name!r} is not a pruner", did_you_mean(pruner.name, PRUNERS))
    params = set(search.parameters)
    for i, o in enumerate(search.objectives):
        known = {**QUALITY_METRICS, **COST_METRICS}
        if o.metric not in known:
            raise UserError(f"{at}.objectives[{i}].metric = {o.metric!r} is not an objective", did_you_mean(o.metric,
                            list(known)))
        if (task == "classification" and o.metric.startswith("rouge")) or \
                (task == "summarization" and o.metric in ("accuracy", "macro_f1")):
            raise UserError(f"{at}.objectives[{i}]: {o.metric} is not a metric of a {task} task",
                            "use accuracy or macro_f1 for classification, rouge1/rouge2/rougeL for summarization")
        if o.metric == "inference_usd_per_1k_tokens" and not params & {"model.name", "serve.merge"}:
            raise UserError(f"{at}.objectives[{i}]: inference cost is an objective only when model.name or "
                            "serve.merge is a parameter (otherwise every trial serves at the same cost)",
                            "add model.name: {choices: [...]} to the parameters, or drop this objective")
    metrics = [o.metric for o in search.objectives]
    if len(set(metrics)) != len(metrics):
        raise UserError(f"{at}.objectives names a metric twice ({', '.join(metrics)})", "give each metric once")
    several = len(search.objectives) > 1
    if several and pruner.name != "none":
        raise UserError(f"{at}: pruner {pruner.name} with {len(search.objectives)} objectives — Optuna cannot prune "
                        "multi-objective trials", "set pruner: none, or keep a single objective")
    if several and search.sampler not in MULTI_SAMPLERS:
        raise UserError(f"{at}.sampler = {search.sampler!r} optimizes one objective, and there are "
                        f"{len(search.objectives)}", "use sampler: nsga2 or motpe (or random)")
    if not several and search.sampler in ("nsga2", "motpe"):
        raise UserError(f"{at}.sampler = {search.sampler!r} is for several objectives, and there is one",
                        "use sampler: tpe, gp or random")
    b = search.budget
    if b.trials is None and b.usd is None and b.wall_seconds is None:
        raise UserError(f"{at}.budget gives no limit", "give budget: {trials: N} and/or usd: X, wall_seconds: S")
