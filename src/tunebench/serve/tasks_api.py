"""The original study's naive route (POST /predict) and a fine-tuned run's task routes (/classify, /summarize,
/task).

/classify runs evaluation's constrained classification (the answer is always one of the run's labels) on
the run's fine-tuning prompt format; /summarize and /task (the generation task: the run's input fields by
name) generate with that format through the engine and stop at its field separator, exactly as evaluation
does.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import APIRouter, Request

from tunebench.serve.jobs import ClassifyJob
from tunebench.serve.schemas import ClassifyRequest, PredictRequest, SummarizeRequest, TaskRequest
from tunebench.serve.state import ServerState
from tunebench.serve.validate import ApiError, invalid

PREDICT_TOKENS = 64


def task_of(state: ServerState, task: str, route: str) -> Any:
    endpoint = state.served.task
    if endpoint is None or endpoint.task != task:
        serving = f"a {endpoint.task} run" if endpoint else "no fine-tuned run"
        raise ApiError(404, "not_found", f"{route} needs a fine-tuned {task} run and this server has {serving}; "
                                         f"start it with 'tunebench serve --run DIR' for a {task} run")
    return endpoint


def finetune_prompt(endpoint: Any, text: str, field: str, extra: tuple[tuple[str, str], ...] = ()) -> str:
    from tunebench.data import Example

    prompt = endpoint.builder.finetune(Example(id="request", input=text, target="", extra=extra))
    if prompt.skipped:
        raise invalid(f"{field} does not fit the model's context with the prompt format")
    return prompt.text


def checked_prompt(state: ServerState, endpoint: Any, text: str, field: str) -> str:
    """The run's prompt around `text`, under the same input limit as generation (in the tokenizing thread)."""
    state.builder.refuse_long_prefix(text, chat=False, field=field)  # before the prompt builder tokenizes it
    prompt = finetune_prompt(endpoint, text, field)
    state.builder.encode(prompt, field=field)
    return prompt


def summarize_request(state: ServerState, endpoint: Any, dialogue: str, wanted: int) -> Any:
    state.builder.refuse_long_prefix(dialogue, chat=False, field="dialogue")
    prompt = finetune_prompt(endpoint, dialogue, "dialogue")
    return state.builder.plain(prompt, wanted, endpoint.stop, endpoint.adapter, field="dialogue")


def finite(scores: dict[str, float]) -> dict[str, float | None]:
    """JSON has no infinity: a label the model gives zero probability scores null."""
    return {label: value if math.isfinite(value) else None for label, value in scores.items()}


def router(state: ServerState, dependencies: list[Any]) -> Any:
    api = APIRouter(tags=["tasks"], dependencies=dependencies)

    @api.post("/predict", summary="The original study's naive route: a prompt in, the generated text out")
    async def predict(body: PredictRequest, request: Request) -> dict[str, str]:
        served = state.served
        endpoint = served.task
        stop = endpoint.stop if endpoint else []
        wanted = body.max_new_tokens or min(PREDICT_TOKENS, state.builder.limits.max_new_tokens)
        generation = await state.build(state.builder.plain, body.prompt, wanted, stop, served.default_adapter)
        completion = await state.complete(request, state.submit(generation))
        return {"prediction": completion.trimmed_text}

    @api.post("/classify", summary="Classify a text with a fine-tuned run's labels (constrained decoding)")
    async def classify(body: ClassifyRequest, request: Request) -> dict[str, Any]:
        endpoint = task_of(state, "classification", "/classify")
        prompt = await state.build(checked_prompt, state, endpoint, body.text, "text")
        job = ClassifyJob(prompt, tuple(endpoint.labels), endpoint.adapter)  # run by the engine, between steps
        result = await state.call(request, job)
        return {"label": result.label, "scores": finite(result.scores)}

    @api.post("/summarize", summary="Summarize a dialogue with a fine-tuned summarization run")
    async def summarize(body: SummarizeRequest, request: Request) -> dict[str, str]:
        endpoint = task_of(state, "summarization", "/summarize")
        wanted = body.max_new_tokens or min(endpoint.max_new_tokens, state.builder.limits.max_new_tokens)
        generation = await state.build(summarize_request, state, endpoint, body.dialogue, wanted)
        completion = await state.complete(request, state.submit(generation))
        return {"summary": completion.trimmed_text.strip()}

    @api.post("/task", summary="Generate a generation run's target from its input fields")
    async def task(body: TaskRequest, request: Request) -> dict[str, Any]:
        endpoint = task_of(state, "generation", "/task")
        names = endpoint.builder.templates.input_fields
        missing = [name for name in names if name not in body.inputs]
        unknown = sorted(set(body.inputs) - set(names))
        if missing or unknown:
            what = f"missing {', '.join(missing)}" if missing else f"unknown {', '.join(unknown)}"
            raise invalid(f"inputs: {what}; this run's input fields are {', '.join(names)}")
        extra = tuple((name, body.inputs[name]) for name in names[1:])
        prompt = finetune_prompt(endpoint, body.inputs[names[0]], f"inputs.{names[0]}", extra)
        wanted = body.max_new_tokens or min(endpoint.max_new_tokens, state.builder.limits.max_new_tokens)
        generation = state.builder.plain(prompt, wanted, endpoint.stop, endpoint.adapter, field="inputs")
        completion = await state.complete(request, state.submit(generation))
        output = completion.trimmed_text.strip()
        return {"output": output, "target": endpoint.builder.templates.target_field,
                "finish_reason": completion.finish_reason}

    return api
