"""The `tunebench` command line.

Each stage keeps its commands beside its code (`tunebench/<stage>/commands.py`, a `register(app)` function);
this module only assembles them and owns the error contract: a `UserError` prints the problem and the fix
and exits with code 2, without a traceback unless `--debug`.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer
from rich.console import Console
from rich.text import Text

from tunebench.errors import EXIT_USER_ERROR, UserError

app = typer.Typer(
    name="tunebench",
    help="Is fine-tuning an open LLM worth it for your task, and what does it cost?",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)

# Stages that contribute commands, in the order they appear in --help.
STAGES = ["tunebench.study.commands", "tunebench.models.commands", "tunebench.data.commands",
          "tunebench.train.commands", "tunebench.evaluate.commands", "tunebench.demo", "tunebench.loadtest.commands",
          "tunebench.serve.commands"]


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="show tracebacks for user errors")) -> None:
    if debug:
        os.environ["TUNEBENCH_DEBUG"] = "1"


for _stage in STAGES:
    importlib.import_module(_stage).register(app)


def main(argv: list[str] | None = None) -> None:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        app(args=argv)  # standalone: typer handles usage errors (exit 2) and --help itself
    except UserError as err:
        if debug:
            raise
        err_console.print(Text.assemble(("error: ", "bold red"), err.problem))
        if err.fix:
            err_console.print(Text.assemble(("  fix: ", "bold"), err.fix))
        sys.exit(EXIT_USER_ERROR)


if __name__ == "__main__":
    main()
