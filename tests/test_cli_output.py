"""Output that survives a pipe: plain unwrapped tables, --json, --version, NO_COLOR, help without type markers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

BOX = re.compile("[\u2500-\u257f]")   # box-drawing characters


def piped(command: str, **env: str) -> subprocess.CompletedProcess:
    """`tunebench <command> | cat` through a real shell pipe, without the COLUMNS the other CLI tests set."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "FORCE_COLOR", "NO_COLOR")}
    full_env.update(env, PYTHONUNBUFFERED="1")
    return subprocess.run(f"{sys.executable} -m tunebench.cli {command}", shell=True, env=full_env,
                          capture_output=True, text=True, timeout=120)


def test_models_through_grep_finds_whole_rows():
    result = piped("models | grep distilbert")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1
    assert re.match(r"^distilbert +distilbert-base-uncased +encoder +67M +q_lin, k_lin, v_lin, out_lin", result.stdout)
    table = piped("models | cat").stdout
    assert not BOX.search(table) and "\x1b[" not in table
    assert "togethercomputer/RedPajama-INCITE-Instruct-3B-v1" in table   # ids are never split over lines
    assert all(line == line.rstrip() for line in table.splitlines())


def test_models_json_is_lazy():
    """`models` prints a static table: without torch or transformers (it took 6-9 s with them)."""
    code = ("import sys; from tunebench.cli import main\n"
            "try:\n    main(['models', '--json'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules), file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert {r["preset"]: r["parameters"] for r in rows}["distilbert"] == 66955010
    assert result.stderr.strip().splitlines()[-1] == "[]"


def test_prices_json_and_version():
    prices = json.loads(piped("prices --json").stdout)
    assert next(p for p in prices if p["name"] == "g5.2xlarge")["price_per_hour"] == 1.212
    from tunebench import __version__

    assert piped("--version").stdout == f"tunebench {__version__}\n"


def test_dry_run_piped_and_json(tmp_path):
    study = tmp_path / "s.yaml"
    study.write_text("name: s\nexperiments:\n  - method: lora\n    sweep: {lora.r: [2, 4]}\n")
    text = piped(f"run --dry-run {study} | cat").stdout
    ids = re.findall(r"^(smollm2-135m-instruct-cls-lora-[0-9a-f]{8}) +smollm2-135m-instruct +classification +lora ",
                     text, re.M)
    assert len(ids) == 2, text
    plan = json.loads(piped(f"run --dry-run --json {study}").stdout)
    assert [c["id"] for c in plan["cells"]] == ids and [c["lora_r"] for c in plan["cells"]] == [2, 4]
    assert plan["training_runs"] == 2


def test_no_color_on_a_terminal():
    """NO_COLOR wins even where colour is forced (as on a terminal)."""
    forced = piped("prices", FORCE_COLOR="1").stdout
    assert "\x1b[" in forced
    assert "\x1b[" not in piped("prices", FORCE_COLOR="1", NO_COLOR="1").stdout


COMMANDS = [[], ["run"], ["report"], ["models"], ["train"], ["eval"], ["merge"], ["demo"], ["loadtest"], ["serve"],
            ["export"], ["data"], ["data", "show"], ["bench"], ["bench", "serve"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "tunebench")
def test_help_has_no_type_markers(command):
    from typer.testing import CliRunner

    from tunebench.cli import app

    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "--help" in result.output
    for marker in ("<bool>", "<list[", "<int>", "<float>", "<str>]"):
        assert marker not in result.output, (command, marker)


def test_run_sets_passive_openmp_waiting_before_torch_loads(tmp_path):
    """`tunebench run` waits passively like `tunebench demo` (spinning threads ran ~2.5x slower on a busy CPU)."""
    study = tmp_path / "s.yaml"
    study.write_text("name: s\nexperiments:\n  - method: zero_shot\n")
    code = ("import os, sys; from tunebench.cli import main\n"
            f"try:\n    main(['run', '--dry-run', {str(study)!r}])\nexcept SystemExit:\n    pass\n"
            "print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules, file=sys.stderr)")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert result.stderr.strip().splitlines()[-1] == "PASSIVE False", result.stderr
