"""The CLI through its real entry point: commands, exit codes and the error contract."""

from __future__ import annotations


def test_models_table(cli):
    result = cli("models")
    assert result.returncode == 0, result.stderr
    for name in ("redpajama-3b", "redpajama-7b-instruct", "falcon-7b", "flan-t5-large", "distilbert",
                 "smollm2-135m-instruct"):
        assert name in result.stdout
    assert "2.78B" in result.stdout and "query_key_value" in result.stdout


def test_prices_table(cli):
    result = cli("prices")
    assert result.returncode == 0 and "g5.2xlarge" in result.stdout and "1.212" in result.stdout


def test_dry_run_prints_cells(cli, tmp_path):
    study = tmp_path / "s.yaml"
    study.write_text("name: s\nexperiments:\n  - method: lora\n    sweep: {lora.r: [2, 4]}\n")
    result = cli("run", "--dry-run", str(study))
    assert result.returncode == 0, result.stderr
    assert "2 cell(s)" in result.stdout and "smollm2-135m-instruct-cls-lora-" in result.stdout


def test_user_errors_exit_2_without_traceback(cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: s\nexperiments:\n  - lora: {rr: 4}\n")
    for args in (["run", "--dry-run", str(tmp_path / "missing.yaml")], ["run", "--dry-run", str(bad)],
                 ["run", "--dry-run", str(bad), "--set", "lora.x=1"]):
        result = cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert "error:" in result.stderr and "fix:" in result.stderr
        assert "Traceback" not in result.stderr


def test_debug_shows_the_traceback(cli, tmp_path):
    result = cli("--debug", "run", "--dry-run", str(tmp_path / "missing.yaml"))
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_usage_error_exit_2(cli):
    result = cli("run", "--no-such-option")
    assert result.returncode == 2 and "No such option" in result.stderr
