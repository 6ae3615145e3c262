"""Functions run on the model between decode steps, as engine request types (the task routes' /classify).

A job is a small picklable object with `run(served)`: the in-process front end hands `job.run` to the engine's
thread (`Engine.call`); the split front end sends the job itself to the engine process (`tunebench.serve.client`),
which runs it between iterations and sends back the result. So a route never ships a closure over the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ClassifyJob:
    """Evaluation's constrained classification of one prompt (the answer is always one of `labels`)."""

    prompt: str
    labels: tuple[str, ...]
    adapter: str | None  # the run's adapter; None: the weights as served

    def run(self, served: Any) -> Any:
        from tunebench.evaluate.classify import constrained_classify

        if served.adapters:
            served.model.set_adapter(self.adapter or next(iter(served.adapters)))
        return constrained_classify(served.model, served.tokenizer, [self.prompt], list(self.labels),
                                    batch_size=1)[0]
