"""tunebench: is fine-tuning an open LLM worth it for your task, and what does it cost?"""

import warnings

__version__ = "0.1.0"

# peft (0.21) reads transformers' deprecated `is_gradient_checkpointing` whenever it wraps a model, so every
# training run, LoRA evaluation and adapter server printed a FutureWarning about code that is not ours.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
