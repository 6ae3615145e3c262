"""vLLM and SGLang as engines, against a stand-in put first on PATH (tests/serve/engine_standin.py).

The stand-in parses the flags as the real CLIs do and serves tunebench's own OpenAI API, so the real export,
launch, health wait, load test, shutdown and failure paths run; the flags themselves are the engines'
documented ones (README, "Engines").
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tunebench.config.schema import LoadtestConfig, ServeConfig
from tunebench.errors import UserError
from tunebench.serve.external import EngineSettings, Exported, engine_command, launcher, request_model

STANDIN = Path(__file__).with_name("engine_standin.py")
FAST_LOAD = dict(rates=[1], duration=1, warmup=0, repeat=1, bisect=0, max_new_tokens=4, slo="p90<=10s")


@pytest.fixture
def standins(tmp_path, monkeypatch) -> Path:
    """`vllm` and `sglang-launch` first on PATH; returns the file each start is logged to."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, engine in (("vllm", "vllm"), ("sglang-launch", "sglang")):
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STANDIN}" {engine} "$@"\n')
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    log = tmp_path / "standin.jsonl"
    monkeypatch.setenv("STANDIN_LOG", str(log))
    return log


def starts(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


# ---------------------------------------------------------------- the commands (no process)


def test_vllm_and_sglang_commands_carry_the_study_settings():
    exported = Exported("/m/model", {"alpha": "/m/a", "beta": "/m/b"}, max_lora_rank=16, context_length=512)
    s = EngineSettings(host="127.0.0.1", port=9001, dtype="bfloat16", max_concurrency=7, context_length=4096,
                       gpu_memory_fraction=0.8, extra_args=("--enforce-eager",), in_cluster=True)
    vllm = engine_command("vllm", ["vllm"], exported, s)
    assert vllm[:3] == ["vllm", "serve", "/m/model"] and vllm[-1] == "--enforce-eager"
    assert (flag(vllm, "--port"), flag(vllm, "--dtype"), flag(vllm, "--max-num-seqs")) == ("9001", "bfloat16", "7")
    assert flag(vllm, "--max-model-len") == "512"  # the model's context caps the study's
    assert flag(vllm, "--gpu-memory-utilization") == "0.8" and flag(vllm, "--distributed-executor-backend") == "mp"
    i = vllm.index("--lora-modules")
    assert "--enable-lora" in vllm and vllm[i + 1:i + 3] == ["alpha=/m/a", "beta=/m/b"]
    assert (flag(vllm, "--max-loras"), flag(vllm, "--max-lora-rank")) == ("2", "16")
    sglang = engine_command("sglang", ["python", "-m", "sglang.launch_server"], exported, s)
    assert flag(sglang, "--model-path") == "/m/model" and flag(sglang, "--max-running-requests") == "7"
    assert flag(sglang, "--context-length") == "512" and flag(sglang, "--mem-fraction-static") == "0.8"
    assert flag(sglang, "--lora-paths") == "alpha=/m/a" and flag(sglang, "--max-loras-per-batch") == "2"
    assert "--distributed-executor-backend" not in sglang  # vLLM's flag only
    outside = engine_command("vllm", ["vllm"], exported, EngineSettings(host="h", port=1))
    assert "--distributed-executor-backend" not in outside
    assert request_model("vllm", exported) == "alpha" and request_model("sglang", exported) == "/m/model:alpha"
    assert request_model("vllm", Exported("/m/model")) == "/m/model"


def test_an_engine_not_installed_names_the_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError) as err:
        launcher("vllm")
    assert "not installed" in err.value.problem and "pip install vllm" in err.value.fix
    with pytest.raises(UserError) as err:
        launcher("sglang", sglang_command="sglang-launch")
    assert "serve.sglang_command" in err.value.problem and "pip install sglang" in err.value.fix


def test_the_cli_exits_2_with_the_hint_when_vllm_is_missing(cli, tiny_llama_dir, tmp_path):
    result = cli("serve", str(tiny_llama_dir), "--engine", "vllm", "--port", "0",
                 env={"PATH": str(tmp_path)})
    assert result.returncode == 2, result.stderr
    assert "not installed" in result.stderr and "pip install vllm" in result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------- multi-LoRA (the study stage: *_study.py)


@pytest.mark.slow
def test_multi_lora_serving_names_adapters_the_engines_way(standins, tiny_llama_dir, lora_adapters, tmp_path):
    from tunebench.loadtest.bench import BenchPlan, bench_engines
    from tunebench.loadtest.prompt_sets import builtin_prompts
    from tunebench.serve.external import launcher_for
    from tunebench.serve.options import AdapterSpec, ModelOptions

    opts = ModelOptions(model=str(tiny_llama_dir), adapters=tuple(AdapterSpec(n, p) for n, p in lora_adapters.items()))
    serve = ServeConfig(sglang_command="sglang-launch")
    plan = BenchPlan([], ["vllm", "sglang"], LoadtestConfig(**FAST_LOAD), builtin_prompts(), tmp_path / "out",
                     external=launcher_for(serve, "auto", opts, tmp_path / "export"))
    comparison = bench_engines(plan, progress=False)
    vllm, sglang = (s["argv"] for s in starts(standins))
    assert "--enable-lora" in vllm and flag(vllm, "--max-loras") == "2" and flag(vllm, "--max-lora-rank") == "8"
    assert flag(vllm, "--lora-modules").startswith("alpha=") and "--lora-paths" in sglang
    for row in comparison["engines"]:
        assert row["served"] == "adapters" and row["adapters"] == 2 and row["max_sustainable_rps"] == 1
    models = [json.loads((tmp_path / "out" / e / "loadtest.json").read_text())["target"]["model"]
              for e in ("vllm", "sglang")]
    assert models[0] == "alpha" and models[1].endswith(":alpha")  # SGLang's <model>:<adapter>


# ---------------------------------------------------------------- failing to start


def one_engine_plan(tmp_path: Path, tiny_llama_dir: Path, timeout: float = 120, **serve: object):
    from tunebench.loadtest.bench import BenchPlan
    from tunebench.loadtest.prompt_sets import builtin_prompts
    from tunebench.serve.external import launcher_for
    from tunebench.serve.options import ModelOptions

    cfg = ServeConfig(**serve)
    return BenchPlan([], ["vllm"], LoadtestConfig(**FAST_LOAD), builtin_prompts(), tmp_path / "out",
                     startup_timeout=timeout,
                     external=launcher_for(cfg, "auto", ModelOptions(model=str(tiny_llama_dir)), tmp_path / "export"))


def test_a_bad_flag_fails_with_the_engines_message(standins, tiny_llama_dir, tmp_path):
    from tunebench.loadtest.bench import bench_engines

    with pytest.raises(UserError) as err:
        bench_engines(one_engine_plan(tmp_path, tiny_llama_dir, engine_args=["--no-such-flag"]), progress=False)
    assert "exited with code 2 before it was healthy" in err.value.problem
    assert "unrecognized arguments: --no-such-flag" in err.value.problem  # the log's tail
    assert "server-vllm.log" in err.value.fix


def test_an_engine_that_dies_while_starting_shows_its_log(standins, tiny_llama_dir, tmp_path, monkeypatch):
    from tunebench.loadtest.bench import bench_engines

    monkeypatch.setenv("STANDIN_FAIL", "1")
    with pytest.raises(UserError) as err:
        bench_engines(one_engine_plan(tmp_path, tiny_llama_dir), progress=False)
    assert "exited with code 1" in err.value.problem and "CUDA out of memory" in err.value.problem


def test_an_engine_too_slow_to_start_is_stopped(standins, tiny_llama_dir, tmp_path):
    from tunebench.loadtest.bench import bench_engines

    with pytest.raises(UserError) as err:
        bench_engines(one_engine_plan(tmp_path, tiny_llama_dir, timeout=0.5), progress=False)
    assert "did not answer GET" in err.value.problem and "within 0.5 s" in err.value.problem
    (started,) = starts(standins)
    assert gone(started["pid"])  # killed, not left loading


def test_a_taken_port_is_refused_before_launch(standins, tiny_llama_dir, tmp_path, monkeypatch):
    from tunebench.loadtest import bench

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        monkeypatch.setattr(bench, "free_port", lambda host: holder.getsockname()[1])
        with pytest.raises(UserError) as err:
            bench.bench_engines(one_engine_plan(tmp_path, tiny_llama_dir), progress=False)
    assert "is taken" in err.value.problem and starts(standins) == []


# ---------------------------------------------------------------- tunebench serve --engine vllm


@pytest.mark.slow
def test_tunebench_serve_runs_vllm_in_the_foreground(standins, tiny_llama_dir, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tunebench.cli", "serve", str(tiny_llama_dir), "--engine", "vllm",
                             "--port", str(port), "--max-concurrency", "2", "--api-key", "sk-engine-key"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        (started,) = starts(standins)
        body = json.dumps({"model": started["argv"][1], "prompt": "Hello", "max_tokens": 3}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", body,
                                         {"Content-Type": "application/json",
                                          "Authorization": "Bearer sk-engine-key"})
        with urllib.request.urlopen(request, timeout=60) as resp:
            assert json.loads(resp.read())["usage"]["completion_tokens"] >= 1
        request.remove_header("Authorization")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=60)
        assert refused.value.code == 401  # the key reached the engine
        assert flag(started["argv"], "--max-num-seqs") == "2"
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=60)[0]
    assert "starting vllm 0.0.0+standin" in output, output
    assert "sk-engine-key" not in output and "--api-key REDACTED" in output  # passed on, never printed
    assert gone(started["pid"])  # the engine went down with tunebench serve


def test_tunebench_serve_refuses_a_taken_port_before_exporting(standins, cli, tiny_llama_dir):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        result = cli("serve", str(tiny_llama_dir), "--engine", "vllm", "--port", str(holder.getsockname()[1]))
    assert result.returncode == 2 and "is taken" in result.stderr and "Traceback" not in result.stderr
    assert starts(standins) == []
