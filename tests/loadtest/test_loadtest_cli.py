"""`tunebench loadtest` through the real entry point, against a real local server; bad input exits 2."""

from __future__ import annotations

import csv
import json
import math

import pytest

from tunebench.loadtest.bench import free_port, serve_command_available

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_loadtest_writes_json_csv_and_plots(cli, fake_server, tmp_path, tiny_tokenizer_dir):
    url = fake_server(delay=0.02, tokens=6)
    out = tmp_path / "out"
    result = cli("loadtest", "--url", url, "--api", "tgi", "--rates", "10,20", "--duration", "0.5s",
                 "--warmup", "200ms", "--repeat", "2", "--bisect", "0", "--price-per-hour", "1.624",
                 "--tokenizer", str(tiny_tokenizer_dir), "--out", str(out), timeout=120)
    assert result.returncode == 0, result.stderr
    assert "max sustainable rate 20 req/s" in result.stdout and "per 1K tokens" in result.stdout

    summary = json.loads((out / "loadtest.json").read_text())
    assert [e["offered_rps"] for e in summary["rates"]] == [10, 20]
    for entry in summary["rates"]:
        assert entry["passed"] and len(entry["repetitions"]) == 2
        assert entry["achieved_rps"] == pytest.approx(entry["offered_rps"], rel=0.1)
        assert entry["mean"]["latency_p90_s"] >= 0.02 and "latency_p90_s" in entry["std"]
    assert summary["token_counts"] == {"input": f"tokenizer {tiny_tokenizer_dir}", "output": "server"}
    cost = summary["cost"]
    best = summary["max_sustainable"]
    assert best["offered_rps"] == 20 and cost["price_per_hour"] == 1.624
    tokens = summary["rates"][1]["mean"]["input_tokens_mean"] + 6
    expected = 1.624 / (best["throughput_rps"] * tokens * 3.6)
    assert cost["cost_per_1k_tokens"] == pytest.approx(expected)

    with (out / "requests.csv").open() as f:
        rows = list(csv.DictReader(f))
    per_rep = {10: math.ceil(10 * 0.7), 20: math.ceil(20 * 0.7)}
    assert len(rows) == 2 * sum(per_rep.values())
    assert {r["error"] for r in rows} == {""} and {r["status"] for r in rows} == {"200"}
    assert sum(r["warmup"] == "1" for r in rows) == 2 * (2 + 4)  # 0.2 s of warm-up at 10/s and at 20/s
    for plot in summary["plots"].values():
        assert (out / plot).read_bytes().startswith(PNG_MAGIC)


def test_loadtest_json_summary_on_stdout(cli, fake_server, tmp_path, tiny_tokenizer_dir):
    url = fake_server(delay=0.0, tokens=3)
    result = cli("loadtest", "--url", url, "--api", "tgi", "--rate", "10", "--duration", "0.3s", "--warmup", "0",
                 "--repeat", "1", "--bisect", "0", "--tokenizer", str(tiny_tokenizer_dir), "--json",
                 "--out", str(tmp_path / "out"), timeout=120)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)   # nothing else on stdout: the progress lines went to stderr
    assert summary == json.loads((tmp_path / "out" / "loadtest.json").read_text())
    assert summary["rates"][0]["offered_rps"] == 10


def test_errors_are_counted_per_kind_and_the_run_finishes(cli, fake_server, tmp_path, tiny_tokenizer_dir):
    url = fake_server(delay=0.0, status_every="4:500", bad_json_every=6)
    out = tmp_path / "out"
    result = cli("loadtest", "--url", url, "--api", "naive", "--rate", "20", "--duration", "1s", "--warmup", "0",
                 "--repeat", "1", "--tokenizer", str(tiny_tokenizer_dir), "--instance", "g5.2xlarge", "--out", str(out),
                 "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "no rate passed" in result.stdout
    mean = json.loads((out / "loadtest.json").read_text())["rates"][0]["mean"]
    assert mean["error_counts"]["http_5xx"] >= 4 and mean["error_counts"]["bad_json"] >= 2
    assert mean["status_counts"]["500"] == mean["error_counts"]["http_5xx"]
    assert mean["successes"] + sum(mean["error_counts"].values()) == mean["requests"] == 20


BAD_INPUT = {
    "rate zero": (["--rate", "0"], "must be > 0"),
    "negative step": (["--sweep", "1:10:-1"], "step must be > 0"),
    "several rate options": (["--rate", "1", "--rates", "1,2"], "not several"),
    "over the request bound": (["--sweep", "1:1024:x2", "--max-requests", "5000"], "bound of 5,000"),
    "bad slo": (["--slo", "p42<=1s"], "SLO clause"),
    "bad duration": (["--duration", "soon"], "--duration"),
    "bad api": (["--api", "grpc"], "allowed: tgi, openai, naive"),
    "naive cannot stream": (["--api", "naive", "--stream"], "cannot stream"),
    "naive has no adapters": (["--api", "naive", "--model", "lora"], "no model or adapter field"),
}


def run_main(capsys, *args: str) -> tuple[int, str]:
    """The real entry point in this process (no interpreter start-up): exit code and stderr, unwrapped."""
    from tunebench.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    return exit_info.value.code, " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_exits_2_before_contacting_the_server(capsys, tmp_path, case):
    args, message = BAD_INPUT[case]
    nobody = f"http://127.0.0.1:{free_port()}"  # had the server been contacted, the error would say so
    code, err = run_main(capsys, "loadtest", "--url", nobody, *args, "--out", str(tmp_path / "out"))
    assert code == 2, err
    assert message in err and "fix:" in err and "Traceback" not in err
    assert "cannot reach" not in err


def test_unreachable_url_and_empty_prompt_file(cli, capsys, tmp_path, tiny_tokenizer_dir):
    nobody = f"http://127.0.0.1:{free_port()}"
    result = cli("loadtest", "--url", nobody, "--rate", "1", "--tokenizer", str(tiny_tokenizer_dir),
                 "--price-per-hour", "1", "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "cannot reach" in result.stderr and "fix:" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "loadtest.json").exists()

    empty = tmp_path / "prompts.txt"
    empty.write_text("\n  \n")
    code, err = run_main(capsys, "loadtest", "--url", nobody, "--prompts", str(empty), "--out", str(tmp_path / "o"))
    assert code == 2 and "is empty" in err


def test_prompt_files_lines_and_jsonl(cli, fake_server, tmp_path, tiny_tokenizer_dir):
    url = fake_server(delay=0.0)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "alpha beta"}\n"gamma delta epsilon"\n{"inputs": "zeta"}\n')
    out = tmp_path / "out"
    result = cli("loadtest", "--url", url, "--api", "openai", "--prompts", str(prompts), "--rate", "6",
                 "--duration", "1s", "--warmup", "0", "--repeat", "1", "--tokenizer", str(tiny_tokenizer_dir),
                 "--out", str(out), "--no-progress")
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "loadtest.json").read_text())
    assert summary["prompts"]["count"] == 3 and summary["target"]["model"] == "fake-model"
    assert summary["rates"][0]["mean"]["input_tokens_mean"] == pytest.approx(2.0)  # 2, 3, 1 words, twice each
    assert summary["token_counts"]["input"] == "server"
    assert summary["cost"]["instance"] == "cpu-2core"  # no price given, server on this machine: this device's


def test_bench_serve_without_the_serving_stage_is_a_clear_error(capsys, monkeypatch, tmp_path):
    """An installation without `tunebench serve` (the serving stage) gets a clear error, not a crash."""
    from tunebench import cli

    others = [c for c in cli.app.registered_commands if (c.name or c.callback.__name__) != "serve"]
    monkeypatch.setattr(cli.app, "registered_commands", others)
    assert not serve_command_available()
    code, err = run_main(capsys, "bench", "serve", "some-model", "--rate", "1", "--tokenizer", "unused",
                         "--out", str(tmp_path / "out"))
    assert code == 2 and "'tunebench serve' is not available" in err and "tunebench loadtest --url" in err
