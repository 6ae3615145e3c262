"""`tunebench serve` and `tunebench export` through the real entry point."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
from serve_helpers import LONG


def start_cli_server(args, log_path, env):
    process = subprocess.Popen([sys.executable, "-m", "tunebench.cli", "serve", *args, "--port", "0"],
                               stdout=log_path.open("w"), stderr=subprocess.STDOUT,
                               env={**os.environ, "COLUMNS": "200", **env})
    deadline = time.monotonic() + 120
    while not (found := re.search(r"on (http://127\.0\.0\.1:\d+)", log_path.read_text())):
        assert process.poll() is None, log_path.read_text()
        assert time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.1)
    return process, found.group(1)


@pytest.mark.parametrize("frontend", ["inline", "split"])
def test_serve_command_answers_then_drains_on_sigterm(tiny_llama_dir, lora_adapters, tmp_path, frontend):
    args = [str(tiny_llama_dir), "--adapter", f"alpha={lora_adapters['alpha']}", "--max-new-tokens", "480",
            "--frontend", frontend]
    process, url = start_cli_server(args, tmp_path / "server.log", {"TUNEBENCH_API_KEY": "s3cret"})
    headers = {"Authorization": "Bearer s3cret"}
    try:
        assert httpx.get(f"{url}/health").status_code == 200
        info = httpx.get(f"{url}/info", headers=headers).json()
        assert info["adapters"] == ["alpha"] and info["frontend"] == frontend
        assert httpx.post(f"{url}/generate", json={"inputs": "x"}).status_code == 401
        result = {}

        def long_request():
            body = {"inputs": "The engine", "parameters": {"max_new_tokens": LONG, "ignore_eos": True,
                                                           "details": True}}
            result["response"] = httpx.post(f"{url}/generate", json=body, headers=headers, timeout=120)

        thread = threading.Thread(target=long_request)
        thread.start()
        deadline = time.monotonic() + 30
        while "tunebench_running_sequences 1.0" not in httpx.get(f"{url}/metrics", headers=headers).text:
            assert time.monotonic() < deadline
        process.send_signal(signal.SIGTERM)  # while the long request is in flight
        thread.join(120)
        response = result["response"]
        assert response.status_code == 200 and response.json()["details"]["generated_tokens"] == LONG
        assert process.wait(60) in (0, -signal.SIGTERM)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/health")
        if frontend == "split":  # the engine process went with it
            engine = re.search(r"engine process (\d+) ready", (tmp_path / "server.log").read_text())
            assert engine, (tmp_path / "server.log").read_text()
            with pytest.raises(ProcessLookupError):
                os.kill(int(engine.group(1)), 0)
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.parametrize(("extra", "message"), [
    (["--adapter", "nameless"], "is not NAME=DIR"),
    (["--engine", "turbo"], "--engine 'turbo' is not an engine"),
    (["--frontend", "threads"], "--frontend 'threads' is not a front-end mode"),
    (["--max-queue", "0"], "--max-queue must be > 0"),
    (["--max-prefill-tokens", "-5"], "--max-prefill-tokens must be > 0"),
    (["--waiting-served-ratio", "-1"], "--waiting-served-ratio -1.0 is not a ratio"),
    (["--waiting-served-ratio", "nan"], "--waiting-served-ratio nan is not a ratio"),
    (["--adapter", "a=/no/such/dir"], "adapter 'a': /no/such/dir is not a directory"),
    (["--merge"], "--merge merges exactly one adapter; 0 given"),
])
def test_serve_refuses_bad_options(cli, tiny_llama_dir, extra, message):
    result = cli("serve", str(tiny_llama_dir), *extra)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "fix:" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(("setting", "frontend"), [
    ("TUNEBENCH_PREFILL_COMPILE=yes", "inline"), ("TUNEBENCH_DECODE_ATTENTION=bogus", "split"),
    ("TUNEBENCH_TRITON_KV_WRITE=on", "inline"), ("TUNEBENCH_WEIGHT_DTYPE=int8", "split")])
def test_a_bad_engine_setting_is_a_user_error(cli, tiny_llama_dir, setting, frontend):
    """A mistyped TUNEBENCH_* value exits 2 with the problem and a fix, from the engine process too."""
    name, value = setting.split("=")
    result = cli("serve", str(tiny_llama_dir), "--port", "0", "--frontend", frontend, env={name: value},
                 timeout=120)
    assert result.returncode == 2, result.stderr
    assert f"{name}='{value}'; allowed:" in result.stderr and f"fix: unset {name}" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_adapter_for_another_base_model_is_refused_at_start_up(tiny_llama_dir, neox_adapter):
    from tunebench.errors import UserError
    from tunebench.serve.loading import load_served
    from tunebench.serve.options import AdapterSpec, ModelOptions

    with pytest.raises(UserError) as refused:
        load_served(ModelOptions(model=str(tiny_llama_dir), adapters=(AdapterSpec("neox", neox_adapter),)))
    assert "adapter 'neox'" in refused.value.problem and "query_key_value" in refused.value.problem
    assert "tiny-gpt_neox" in refused.value.problem and "--adapter neox=" in refused.value.fix


def test_export_tgi_merges_the_adapter(cli, batched, lora_adapters, tiny_llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunebench.evaluate.generation import generate

    out = tmp_path / "tgi"
    result = cli("export", str(tiny_llama_dir), "--adapter", f"alpha={lora_adapters['alpha']}", "--target", "tgi",
                 "--dtype", "fp32", "--out", str(out))
    assert result.returncode == 0, result.stderr
    readme = (out / "README.md").read_text()
    assert "docker run --gpus all" in readme and "text-generation-inference" in readme and "/data" in readme
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["merged_adapter"] == "alpha" and manifest["command"] in readme
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    merged = generate(model, tokenizer, ["Simmer the onions"], max_new_tokens=12)[0].text
    served = batched.generate("Simmer the onions", max_new_tokens=12, adapter_id="alpha")["generated_text"]
    assert merged == served
    again = cli("export", str(tiny_llama_dir), "--target", "tgi", "--out", str(out))
    assert again.returncode == 2 and "is not empty" in again.stderr


def test_export_of_a_run_shows_its_fine_tuning_prompt_format(cls_run, tmp_path):
    """The README sends the model a request in the format it was trained on, not "Hello"."""
    from tunebench.serve.export import export_model
    from tunebench.serve.options import ModelOptions

    out = tmp_path / "vllm-run"
    manifest = export_model(ModelOptions(run=cls_run, device="cpu"), "vllm", out)
    example = manifest["prompt_example"]
    assert example["task"] == "classification" and "###Sentence:" in example["prompt"]
    readme = (out / "README.md").read_text()
    assert '"Hello"' not in readme.split("Try it:")[1]
    assert json.dumps(example["prompt"])[1:-1] in readme and "rattling noise" in readme


def test_export_vllm_keeps_adapters_for_lora_serving(lora_adapters, tiny_llama_dir, tmp_path):
    from tunebench.serve.export import export_model
    from tunebench.serve.options import AdapterSpec, ModelOptions

    out = tmp_path / "vllm"
    specs = tuple(AdapterSpec(name, path) for name, path in lora_adapters.items())
    manifest = export_model(ModelOptions(model=str(tiny_llama_dir), adapters=specs, device="cpu"), "vllm", out)
    command = manifest["command"]
    assert command.startswith(f"vllm serve {(out / 'model').resolve()}") and "--enable-lora" in command
    assert f"alpha={(out / 'adapters' / 'alpha').resolve()}" in command and "--max-lora-rank 8" in command
    assert (out / "adapters" / "beta" / "adapter_model.safetensors").exists()
    assert (out / "model" / "config.json").exists() and command in (out / "README.md").read_text()
    assert json.loads((out / "export.json").read_text())["adapters"].keys() == {"alpha", "beta"}
