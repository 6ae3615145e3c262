"""The study-file schema, owned here for every stage.

A study file has a `name`, `defaults` and a list of `experiments`. Each experiment overrides fields of the
defaults and declares its axes under `sweep:` (a product) and `zip:` (axes that vary together). Expanding
them gives cells; one cell is a `CellConfig`: everything one run of the pipeline needs (data → prompt →
train → evaluate → serve → load test). Every section rejects unknown keys, so a typo never passes silently.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tunebench.config.search import SearchConfig

Task = Literal["classification", "summarization", "generation"]
Method = Literal["zero_shot", "few_shot", "lora", "qlora", "full"]
PROMPT_METHODS = ("zero_shot", "few_shot")
ADAPTER_METHODS = ("lora", "qlora")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    name: str = Field("smollm2-135m-instruct", description="preset name, Hugging Face id or local path")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    random_weights: bool = Field(False, description="build the architecture from its config, no download")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2", "flex_attention"] | None = None
    trust_remote_code: bool = False
    revision: str | None = None
    # a hosted model as the baseline (zero/few-shot only): prompts are built with `name`'s tokenizer, sent here
    endpoint: str | None = Field(None, description="base URL of an OpenAI-compatible API, e.g. http://host:8000")
    endpoint_model: str | None = Field(None, description="the `model` field sent; None: `name`")
    endpoint_api: Literal["completions", "chat"] = Field("completions", description="/v1/completions, or the "
                                                         "prompt as one user message to /v1/chat/completions")
    endpoint_api_key_env: str | None = Field(None, description="environment variable holding the API key")
    endpoint_input_usd_per_1m: float = Field(0.0, ge=0, description="USD per 1M input tokens")
    endpoint_output_usd_per_1m: float = Field(0.0, ge=0, description="USD per 1M output tokens")


class CleaningConfig(Section):
    strip_headers: bool = False
    strip_footers: bool = False
    strip_quotes: bool = False
    normalize_whitespace: bool = True
    max_input_tokens: int | None = Field(None, gt=0, description="truncate inputs (never labels) to this")
    fold_labels: bool = Field(False, description="merge labels that differ only by case, whitespace or Unicode "
                                                 "form into their most frequent spelling (else: a warning)")


class DataConfig(Section):
    source: str = "builtin:classification"
    task: Task = "classification"
    train_split: str = "train"
    eval_split: str = "test"
    validation_split: str | None = Field(None, description="taken from the source; else carved from train")
    validation_size: float = Field(0.1, gt=0, lt=1)
    eval_size: float = Field(0.2, gt=0, lt=1, description="share of each class carved from train to evaluate "
                             "on when the source has no 'test' split (a single file)")
    columns: dict[str, str] = Field(default_factory=dict, description="tunebench name -> source column")
    inputs: list[str] | None = Field(None, min_length=1, description="generation: the input field(s); None: "
                                     "[input] (builtin:extraction: [message]); the first one is cut to fit")
    target: str | None = Field(None, description="generation: the target field; None: target (extraction: fields)")
    train_fraction: float | None = Field(None, gt=0, le=1)
    train_count: int | None = Field(None, gt=0)
    cleaning: CleaningConfig = Field(default_factory=CleaningConfig)
    seed: int = 0

    @model_validator(mode="after")
    def _one_size(self) -> DataConfig:
        if self.train_fraction is not None and self.train_count is not None:
            raise ValueError("give data.train_fraction or data.train_count, not both")
        return self


class PromptConfig(Section):
    style: Literal["original"] = Field("original", description="template preset")
    zero_shot: str | None = Field(None, description="custom zero-shot template")
    few_shot: str | None = None
    finetune: str | None = Field(None, description="custom fine-tuning template; its inference twin ends at the answer")
    few_shot_examples: int | None = Field(None, ge=1, description="None: one per class / 3 dialogues")
    chat_template: bool | None = Field(None, description="None: use it when the model preset is instruct")
    context_policy: Literal["truncate", "skip"] = "truncate"
    answer_tokens: int = Field(64, ge=1, description="room left for the answer in the context window")
    instruction: str | None = Field(None, description="generation: the task, opening the default zero/few-shot "
                                    "templates; None: 'Write the <target> for the <inputs> below.'")


class LoraConfig(Section):
    r: int = Field(8, ge=1)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] | None = Field(None, description="None: the preset's")
    options: dict[str, Any] = Field(default_factory=dict, description="other peft.LoraConfig fields (use_dora...)")


class TrainingConfig(Section):
    recipe: Literal["fast", "original"] = "fast"
    epochs: int | None = Field(None, ge=1, description="None: the recipe's (original: 5 classification, 1 summ.)")
    learning_rate: float | None = Field(None, gt=0, description="None: 2e-4 for LoRA/QLoRA, 2e-5 for full")
    lr_scheduler: str = "constant_with_warmup"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int | None = Field(None, ge=1, description="rows per step; None: the recipe's")
    tokens_per_batch: int | None = Field(None, ge=1, description="token budget per step (fast recipe)")
    gradient_accumulation: int | None = Field(None, ge=1)
    max_seq_len: int | None = Field(None, ge=8)
    packing: Literal["none", "padding_free", "concat", "length_grouped"] | None = None
    gradient_checkpointing: bool | None = None
    loss_on: Literal["completion", "full"] = "completion"
    max_grad_norm: float | None = Field(None, gt=0)
    optimizer: str | None = None
    eval_each_epoch: bool = True
    best_metric: str = "eval_loss"
    save_steps: int | None = Field(None, ge=1)
    max_steps: int | None = Field(None, ge=1)
    report_to: list[Literal["tensorboard", "mlflow"]] = Field(default_factory=list)
    seed: int = 0


class EvalConfig(Section):
    split: str | None = Field(None, description="None: data.eval_split")
    limit: int | None = Field(None, ge=1)
    scoring: Literal["constrained", "generate", "loglik"] = "constrained"
    calibrate: Literal["auto", "none", "content_free"] = Field(
        "auto", description="label scoring (constrained, loglik): content_free divides label probabilities by "
        "those for content-free inputs (Zhao et al. 2021); auto = content_free for prompted methods (zero_shot, "
        "few_shot), none for fine-tuned ones")
    max_new_tokens: int | None = Field(None, ge=1, description="None: 8 for classification, 96 for summaries")
    batch_size: int = Field(16, ge=1)
    bootstrap: int = Field(1000, ge=0)
    engine: Literal["auto", "padded", "continuous", "batched"] = Field(
        "auto", description="generation batching: padded batches (model.generate), tunebench's serving engine "
        "offline (batched), or transformers' continuous batching (continuous, CUDA); auto = batched for a "
        "causal full-attention model on CUDA, padded otherwise")
    # The generation task's metrics (evaluate/textmetrics.py); the first is the report's headline.
    metrics: list[str] | None = Field(None, min_length=1, description="generation: exact_match, token_f1, rouge, "
                                      "bleu, chrf, json, or a user metric 'module:function'; None: exact_match, "
                                      "token_f1")
    normalize: list[Literal["case", "whitespace", "punctuation"]] = Field(
        default_factory=lambda: ["whitespace"], description="exact_match (and JSON string fields): what to ignore")
    json_schema: str | dict[str, Any] | None = Field(None, description="json: a JSON schema (file path or inline) "
                                                     "predictions are validated against")
    stop: list[str] = Field(default_factory=list, description="generation: extra stop sequences")


class CostConfig(Section):
    instance: str | None = Field(None, description="price-table entry; None: match the device")
    price_per_hour: float | None = Field(None, gt=0)
    # an assumption, not a measurement: clouds publish no per-hour preemption rate (the prediction says so)
    spot_preemptions_per_hour: float = Field(0.1, ge=0, description="spot: preemptions per machine-hour assumed "
                                             "by the cost prediction (each redoes the work since the last "
                                             "checkpoint)")


Engine = Literal["batched", "naive", "vllm", "sglang"]


class ServeConfig(Section):
    engine: Engine = Field("batched", description="tunebench's own (batched, naive) or an installed vllm / sglang")
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    merge: bool = False
    max_concurrency: int = Field(32, ge=1)
    max_queue: int = Field(256, ge=1)
    max_input_tokens: int = Field(2048, ge=1)
    max_new_tokens: int = Field(256, ge=1)
    request_timeout: float = Field(300.0, gt=0, description="seconds a request may take, queueing included")
    max_prefill_tokens: int = Field(4096, ge=1, description="batched engine: padded prompt tokens in one prefill "
                                    "launch, one launch per scheduler iteration, at least one prompt and at most 64 "
                                    "on CUDA (as TGI's --max-batch-prefill-tokens); larger admits a burst in fewer, "
                                    "longer prefills, during which running streams wait")
    waiting_served_ratio: float = Field(
        math.inf, ge=0, description="batched engine: after a prefill, another runs before the next decode step "
        "while waiting >= this x running requests (TGI's --waiting-served-ratio); .inf: one prefill per "
        "iteration; 0: every free slot is filled before decoding resumes")
    frontend: Literal["auto", "split", "inline"] = Field(
        "auto", description="split: HTTP, tokenization and streaming in one process, the engine in another; inline: "
                            "both in one process (debugging); auto: split on CUDA, inline on the CPU (as measured)")
    frontends: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = Field(
        "auto", description="front-end processes sharing the engine process (split only): each parses, tokenizes "
                            "and streams its share of the requests; auto: 4 on a machine of >= 16 cores, else 1")
    # vllm / sglang only (tunebench's own engines ignore these)
    gpu_memory_fraction: float = Field(0.9, gt=0, le=1, description="vllm --gpu-memory-utilization, sglang "
                                       "--mem-fraction-static")
    engine_args: list[str] = Field(default_factory=list, description="extra flags passed to vllm / sglang as given")
    vllm_command: str = Field("vllm", description="the vLLM CLI to run (its `serve` subcommand is added)")
    sglang_command: str | None = Field(None, description="SGLang's launcher; None: this Python's "
                                       "`-m sglang.launch_server`")
    startup_timeout: float = Field(600.0, gt=0, description="seconds to wait for the engine's GET /health")


class LoadtestConfig(Section):
    enabled: bool = False
    engines: list[Engine] = Field(default_factory=lambda: ["naive", "batched"])
    rates: list[float] | None = None
    sweep: str | None = Field(None, description="START:STOP:STEP or START:STOP:xFACTOR")
    duration: float = Field(30.0, gt=0)
    warmup: float = Field(5.0, ge=0)
    repeat: int = Field(3, ge=1)
    arrival: Literal["constant", "poisson"] = "constant"
    max_new_tokens: int = Field(64, ge=1)
    ignore_eos: bool = False
    stream: bool = False
    timeout: float = Field(60.0, gt=0)
    slo: str = "p90<=2s"
    api: Literal["tgi", "openai", "naive"] = "tgi"
    prompts: str | None = Field(None, description="prompt file (one per line, or JSONL); None: the built-in set")
    bisect: int = Field(3, ge=0, description="bisection steps between the last passing and first failing rate")
    max_requests: int = Field(1_000_000, ge=1, description="refuse a plan that could send more requests")
    seed: int = 0
    # a server the user already runs elsewhere (any OpenAI-compatible endpoint), load-tested beside the engines
    url: str | None = Field(None, description="base URL of an OpenAI-compatible server, e.g. http://host:8000")
    url_name: str = Field("external", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="its row's name")
    url_model: str | None = Field(None, description="the `model` field sent to it; None: its first /v1/models")
    url_api_key_env: str | None = Field(None, description="environment variable holding its API key")
    url_price_per_hour: float | None = Field(None, gt=0, description="USD per hour of that server")
    url_input_usd_per_1m: float | None = Field(None, ge=0, description="per-token pricing: USD per 1M input tokens")
    url_output_usd_per_1m: float | None = Field(None, ge=0, description="USD per 1M output tokens")

    @field_validator("rates")
    @classmethod
    def _positive_rates(cls, rates: list[float] | None) -> list[float] | None:
        if rates is not None and any(r <= 0 for r in rates):
            raise ValueError("every rate must be > 0 requests/s")
        return rates


class ResourcesConfig(Section):
    """What one unit of this cell needs from a cluster node (the Ray executor); the inline executor ignores it."""

    gpus: int | None = Field(None, ge=0, description="GPUs on one node; None: 1 when the cluster has GPUs, else 0. "
                             "More than 1 trains data-parallel under torchrun on the GPUs the executor assigned")
    cpus: float = Field(1.0, gt=0, description="CPU cores the unit reserves")
    memory_gb: float | None = Field(None, gt=0, description="host memory the unit reserves (GiB); None: none")
    retries: int = Field(2, ge=0, description="re-runs after a system failure (killed worker, lost node), each "
                         "resuming from the last step checkpoint; a Python exception is never retried")


class CellConfig(Section):
    """Everything one cell of a study needs, fully resolved."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    method: Method = "zero_shot"
    lora: LoraConfig = Field(default_factory=LoraConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    cost: CostConfig = Field(default_factory=CostConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    loadtest: LoadtestConfig = Field(default_factory=LoadtestConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)

    @model_validator(mode="after")
    def _endpoint_prompts_only(self) -> CellConfig:
        if self.model.endpoint and self.method not in PROMPT_METHODS:
            raise ValueError(f"model.endpoint is a hosted model: it can be prompted (zero_shot, few_shot), not "
                             f"fine-tuned (method {self.method})")
        return self

    def normalized(self) -> CellConfig:
        """Reset what cannot affect this method's results, so equal work gets one cell id.

        A zero-shot evaluation does not depend on LoRA settings or the training-set size; full fine-tuning
        does not depend on LoRA settings.
        """
        update: dict[str, Any] = {}
        if self.method in PROMPT_METHODS:
            data = self.data.model_copy(update={"train_fraction": None, "train_count": None})
            update |= {"lora": LoraConfig(), "training": TrainingConfig(), "data": data}
        elif self.method == "full":
            update["lora"] = LoraConfig()
        return self.model_copy(update=update)


class Experiment(BaseModel):
    """One block of a study: overrides of the defaults plus its axes."""

    model_config = ConfigDict(extra="allow")

    name: str | None = None
    sweep: dict[str, list[Any]] = Field(default_factory=dict)
    zip: dict[str, list[Any]] | list[dict[str, list[Any]]] = Field(default_factory=dict)

    def overrides(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def zip_groups(self) -> list[dict[str, list[Any]]]:
        groups = self.zip if isinstance(self.zip, list) else [self.zip]
        return [g for g in groups if g]


class ExecutorConfig(Section):
    """Where a study's units run: one after another in this process, or as tasks on a Ray cluster."""

    name: Literal["inline", "ray"] = "inline"
    address: str | None = Field(None, description="ray: 'auto' (a running cluster), HOST:PORT, or None to start a "
                                "local instance for the run")


class StudyConfig(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str = ""
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    storage: str | None = Field(None, description="where run directories live: a local path (NFS) or an fsspec "
                                "URI (s3://bucket/prefix, gs://...); None: the study directory itself")
    defaults: dict[str, Any] = Field(default_factory=dict)
    experiments: list[Experiment] = Field(default_factory=lambda: [Experiment()])
    search: SearchConfig | None = Field(None, description="sample cells instead of a grid (tunebench.study.search)")
