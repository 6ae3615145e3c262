"""Evaluation and inference: batched generation, label scoring, metrics, and merging adapters for serving.

    evaluate_cell(cell, run)                   a cell's eval split -> run.eval_dir(split, method)/
    load_for_eval(cell, run, adapter)          model + tokenizer (+ adapter) -> Loaded
    generation.generate(model, tok, prompts, max_new_tokens=..., stop=...)  -> [Generation]
    classify.constrained_classify(model, tok, prompts, labels)              -> [ClassResult]
    merge.merge_adapter(adapter, out, ...)     LoRA folded into the 16-bit base, saved standalone
"""

from tunebench.evaluate.loading import Loaded, load_for_eval
from tunebench.evaluate.runner import evaluate, evaluate_cell

__all__ = ["Loaded", "evaluate", "evaluate_cell", "load_for_eval"]
