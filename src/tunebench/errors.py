"""The error contract shared by every stage.

A `UserError` is something the user can fix: a bad path, a wrong value, a missing GPU. The CLI prints it as
two short lines (the problem, then the fix) and exits with code 2, without a traceback unless `--debug`.
Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A problem in the user's input, named together with how to fix it."""

    def __init__(self, problem: str, fix: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix

    def __str__(self) -> str:
        return self.problem if not self.fix else f"{self.problem}\n  fix: {self.fix}"


class SettingError(UserError, ValueError):
    """A bad value in a TUNEBENCH_* environment setting: a UserError for the CLI (exit 2, no traceback, also
    when the engine process raises it), a ValueError for code that checks values."""

    def __init__(self, problem: str) -> None:
        name = problem.split("=")[0].split(":")[0]
        super().__init__(problem, f"unset {name} or give it one of the values named")


def setting_choice(name: str, choices: tuple[str, ...]) -> str:
    """The environment setting `name` as one of `choices` (case and spaces ignored; unset or empty: the first),
    or a SettingError naming the allowed values."""
    import os

    raw = os.environ.get(name, choices[0])
    choice = raw.strip().lower() or choices[0]
    if choice not in choices:
        raise SettingError(f"{name}={raw!r}; allowed: {', '.join(choices)}")
    return choice


# Names users bring from other tools (peft, the transformers Trainer) that spelling alone cannot match.
ALIASES = {"rank": "r", "lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout", "lr": "learning_rate",
           "epoch": "epochs", "num_train_epochs": "epochs", "bs": "batch_size", "steps": "max_steps",
           "grad_accum": "gradient_accumulation", "gradient_accumulation_steps": "gradient_accumulation",
           "warmup": "warmup_ratio", "wd": "weight_decay", "scheduler": "lr_scheduler", "targets": "target_modules"}


def closest(word: str, choices: list[str] | tuple[str, ...]) -> str | None:
    """The closest valid name for `word`, for 'did you mean' hints: a known alias (`rank` -> `r`), the
    initials of a snake_case name (`lr` -> `learning_rate`), else the closest spelling (`lorra` -> `lora`)."""
    import difflib

    choices = list(choices)
    if ALIASES.get(word) in choices:
        return ALIASES[word]
    initials = [c for c in choices if len(word) > 1 and "_" in c and "".join(p[:1] for p in c.split("_")) == word]
    if len(initials) == 1:
        return initials[0]
    found = difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    return found[0] if found else None


def did_you_mean(word: str, choices: list[str] | tuple[str, ...]) -> str:
    guess = closest(word, choices)
    allowed = ", ".join(sorted(choices))
    return f"did you mean '{guess}'? (allowed: {allowed})" if guess else f"allowed: {allowed}"
