"""The consoles every command prints through: Rich on a terminal, plain unwrapped text in a pipe or a file.

Rich lays a non-terminal out at 80 columns, so `tunebench models | grep distilbert` found nothing (ids split over
lines inside box-drawn cells) and a printed `vllm serve ...` command broke mid-path. In a pipe we print each line
whole, tables without boxes (columns separated by two spaces, trailing blanks stripped), panels as wide as their
text, and no colour codes. `NO_COLOR` (https://no-color.org) turns colour off on a terminal too.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

PIPE_WIDTH = 100_000   # "unwrapped": wider than any line we print


def is_terminal(stderr: bool = False) -> bool:
    stream = sys.stderr if stderr else sys.stdout
    try:
        return stream.isatty()
    except (AttributeError, ValueError):   # replaced or closed streams
        return False


class PlainConsole(Console):
    """A Rich console for pipes and files: no wrapping, no boxes, no colour."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        plain = [plain_renderable(obj) for obj in objects]
        if not any(isinstance(obj, (Table, Panel)) for obj in plain):
            super().print(*plain, **kwargs)
            return
        with self.capture() as captured:
            super().print(*plain, **kwargs)
        self.file.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))
        self.file.flush()


def plain_renderable(obj: Any) -> Any:
    if isinstance(obj, Table):
        obj.box, obj.show_edge, obj.pad_edge = None, False, False
        obj.padding = (0, 2, 0, 0)   # two spaces between columns, none before the first
    elif isinstance(obj, Panel):
        obj.expand = False
    return obj


def console(stderr: bool = False) -> Console:
    """The console for stdout (or stderr): plain when that stream is not a terminal."""
    no_color = os.environ.get("NO_COLOR", "") != ""
    if not is_terminal(stderr) and not os.environ.get("FORCE_COLOR"):
        return PlainConsole(stderr=stderr, width=PIPE_WIDTH, soft_wrap=True, color_system=None, highlight=False,
                            emoji=False)
    return Console(stderr=stderr, color_system=None if no_color else "auto", no_color=no_color or None)


def print_json(data: Any) -> None:
    """One JSON document on stdout (for `--json`): machine-readable, no Rich markup or wrapping."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()
