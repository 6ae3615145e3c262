"""Serving fixtures: the tiny Llama with real LoRA adapters (peft, random A and B so each visibly changes the
output, saved with save_pretrained), and session-wide servers for the batched and naive engines."""

from __future__ import annotations

from pathlib import Path

import pytest
from serve_helpers import API_KEY, load, make_adapter, start


@pytest.fixture(scope="session")
def lora_adapters(tiny_llama_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {name: make_adapter(tiny_llama_dir, root / name, seed, ["q_proj", "v_proj"])
            for name, seed in (("alpha", 1), ("beta", 2))}


@pytest.fixture(scope="session")
def neox_adapter(tiny_neox_dir, tmp_path_factory) -> Path:
    return make_adapter(tiny_neox_dir, tmp_path_factory.mktemp("neox-adapter") / "a", 3, ["query_key_value"])


@pytest.fixture(scope="session")
def batched(tiny_llama_dir, lora_adapters):
    """The batched engine with two adapters and an API key."""
    background, live = start(tiny_llama_dir, lora_adapters, api_key=API_KEY)
    yield live
    background.stop()


@pytest.fixture(scope="session")
def naive(tiny_llama_dir, lora_adapters):
    background, live = start(tiny_llama_dir, lora_adapters, engine="naive")
    yield live
    background.stop()


@pytest.fixture
def local_hub_client(monkeypatch):
    """huggingface_hub refuses every URL in offline mode (the suite sets it), even 127.0.0.1: lift it for a test
    whose InferenceClient talks to the local server only."""
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)


@pytest.fixture(scope="session")
def cls_run(tiny_llama_dir, tmp_path_factory) -> Path:
    """A classification LoRA run directory written by the training stage (one step on the built-in data)."""
    from tunebench.config.schema import CellConfig, DataConfig, LoraConfig, ModelConfig, TrainingConfig
    from tunebench.rundir import RunDir
    from tunebench.train import train_cell

    cell = CellConfig(model=ModelConfig(name=str(tiny_llama_dir)), method="lora",
                      data=DataConfig(source="builtin:classification", task="classification"),
                      training=TrainingConfig(max_steps=1, epochs=1, eval_each_epoch=False),
                      lora=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    run = RunDir(tmp_path_factory.mktemp("runs") / "cls-lora")
    train_cell(cell, run, progress=False)
    return run.path


@pytest.fixture(scope="session")
def sum_run(tiny_llama_dir, tmp_path_factory) -> Path:
    """A summarization LoRA run directory laid out as training writes it (config + PEFT adapter)."""
    from tunebench.config.schema import CellConfig, DataConfig, ModelConfig
    from tunebench.rundir import RunDir

    cell = CellConfig(model=ModelConfig(name=str(tiny_llama_dir)), method="lora",
                      data=DataConfig(source="builtin:summarization", task="summarization"))
    run = RunDir(tmp_path_factory.mktemp("runs") / "sum-lora")
    run.write_config(cell)
    make_adapter(tiny_llama_dir, run.adapter, 4, ["q_proj", "v_proj"])
    return run.path


@pytest.fixture(scope="module")
def neox(tiny_neox_dir):
    """The tiny GPT-NeoX (multi-head attention) served, loaded once per test module."""
    return load(tiny_neox_dir)


@pytest.fixture(scope="module")
def llama(tiny_llama_dir):
    """The tiny Llama (grouped-query attention) served, loaded once per test module."""
    return load(tiny_llama_dir)
