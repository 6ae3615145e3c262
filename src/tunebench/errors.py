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


def closest(word: str, choices: list[str] | tuple[str, ...]) -> str | None:
    """The closest valid spelling of `word`, for 'did you mean' hints."""
    import difflib

    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return found[0] if found else None


def did_you_mean(word: str, choices: list[str] | tuple[str, ...]) -> str:
    guess = closest(word, choices)
    allowed = ", ".join(sorted(choices))
    return f"did you mean '{guess}'? (allowed: {allowed})" if guess else f"allowed: {allowed}"
