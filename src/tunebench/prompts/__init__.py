"""Prompts: zero-shot, few-shot and fine-tuning templates, chat templates for instruct models, a context guard.

    PromptBuilder.for_cell(cell, tokenizer, task_data, model_source).for_method(method, example) -> Prompt
"""

from tunebench.prompts.builder import FINETUNE_METHODS, Prompt, PromptBuilder, context_length_of
from tunebench.prompts.templates import FEW_SHOT, FINETUNE, ZERO_SHOT, Templates

__all__ = ["FEW_SHOT", "FINETUNE", "FINETUNE_METHODS", "ZERO_SHOT", "Prompt", "PromptBuilder", "Templates",
           "context_length_of"]
