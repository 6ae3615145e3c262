"""The `tunebench` command line.

Each stage keeps its commands beside its code (`tunebench/<stage>/commands.py`, a `register(app)` function);
this module only assembles them and owns the error contract: a `UserError` prints the problem and the fix
and exits with code 2, without a traceback unless `--debug`.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import typing
from pathlib import Path
from typing import Any

import click
import typer
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

from tunebench import terminal
from tunebench.errors import EXIT_USER_ERROR, UserError


class PlainHelpCommand(TyperCommand):
    def get_help_option(self, ctx: click.Context) -> click.Option | None:
        return _flag(super().get_help_option(ctx))


class PlainHelpGroup(TyperGroup):
    def get_help_option(self, ctx: click.Context) -> click.Option | None:
        return _flag(super().get_help_option(ctx))


def _flag(option: click.Option | None) -> click.Option | None:
    if option is not None:
        option.metavar = ""
    return option


app = typer.Typer(
    name="tunebench",
    help="Is fine-tuning an open LLM worth it for your task, and what does it cost?",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=PlainHelpGroup,
)
err_console = terminal.console(stderr=True)

# Stages that contribute commands, in the order they appear in --help.
STAGES = ["tunebench.study.commands", "tunebench.models.commands", "tunebench.data.commands",
          "tunebench.train.commands", "tunebench.evaluate.commands", "tunebench.demo", "tunebench.loadtest.commands",
          "tunebench.serve.commands"]


def _version(value: bool) -> None:
    if value:
        from tunebench import __version__

        terminal.console().print(f"tunebench {__version__}")
        raise typer.Exit()


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="show tracebacks for user errors"),
          version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit")) -> None:
    if debug:
        os.environ["TUNEBENCH_DEBUG"] = "1"


# Typer's help shows every option's Python type (`--dry-run <bool>`, `--set <list[str]>`): a flag gets no
# marker and a value the usual upper-case word (`--out PATH`, `--set TEXT`), as in Click's own help.
# Arguments keep their `<path>` / `<str>`, which says what to give.
METAVARS = {bool: "", int: "INTEGER", float: "FLOAT", Path: "PATH"}


def _plain_metavars(typer_app: typer.Typer) -> None:
    from typer.models import OptionInfo

    for command in typer_app.registered_commands:
        if command.cls in (None, TyperCommand):
            command.cls = PlainHelpCommand
    callbacks = [c.callback for c in typer_app.registered_commands] + [typer_app.registered_callback.callback
                                                                       if typer_app.registered_callback else None]
    for callback in filter(None, callbacks):
        try:
            hints = typing.get_type_hints(callback)
        except (NameError, TypeError):   # a name only imported for type checking: TEXT is still right
            hints = {}
        for name, param in inspect.signature(callback).parameters.items():
            info = param.default
            if isinstance(info, OptionInfo) and info.metavar is None:
                info.metavar = METAVARS.get(_bare(hints.get(name, str)), "TEXT")
    for group in typer_app.registered_groups:
        group.cls = PlainHelpGroup   # Typer's own default otherwise (a placeholder object)
        if group.typer_instance is not None:
            _plain_metavars(group.typer_instance)


def _bare(annotation: Any) -> Any:
    """`Path | None` -> Path, `list[str]` -> str."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return _bare(args[0]) if args else annotation


for _stage in STAGES:
    importlib.import_module(_stage).register(app)
_plain_metavars(app)


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
