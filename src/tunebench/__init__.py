"""tunebench: is fine-tuning an open LLM worth it for your task, and what does it cost?"""

__version__ = "0.1.0"
