"""train_cell on tiny models of every kind and method: outputs, epoch checkpoints, metering and bad input."""

from __future__ import annotations

import errno
import importlib.util
import json

import pytest
import torch

from tunebench.config.schema import CellConfig
from tunebench.errors import UserError
from tunebench.rundir import RunDir
from tunebench.train import train_cell

SUMMARY_KEYS = {"train_loss", "eval_loss", "wall_time_s", "train_time_s", "examples_seen", "tokens_seen",
                "tokens_per_s", "mfu", "mfu_formula", "peak_memory_gib", "device", "price_per_hour", "cost_usd",
                "base_parameters", "best", "epoch_checkpoints", "plan"}
METRIC_KEYS = {"step", "loss", "learning_rate", "tokens_per_s", "tokens", "peak_memory_gib", "elapsed_s"}


def make_cell(model_dir, method: str = "lora", task: str = "classification", count: int = 24,
              **training) -> CellConfig:
    return CellConfig.model_validate({
        "model": {"name": str(model_dir)}, "method": method,
        "data": {"source": f"builtin:{task}", "task": task, "train_count": count},
        "training": {"epochs": 2, "tokens_per_batch": 768, "max_seq_len": 256, **training},
    })


def run_dir(tmp_path, name: str = "cell") -> RunDir:
    return RunDir(tmp_path / name)


@pytest.mark.parametrize(("fixture", "method", "task", "weights"), [
    ("tiny_neox_dir", "lora", "classification", "adapter"),
    ("tiny_llama_dir", "lora", "summarization", "adapter"),
    ("tiny_neox_dir", "full", "classification", "model"),
    ("tiny_t5_dir", "lora", "summarization", "adapter"),
    ("tiny_t5_dir", "full", "classification", "model"),
])
def test_every_generative_kind_and_method_trains(request, tmp_path, fixture, method, task, weights):
    run = run_dir(tmp_path)
    summary = train_cell(make_cell(request.getfixturevalue(fixture), method, task, count=16), run, progress=False)
    assert summary.keys() >= SUMMARY_KEYS and summary["steps"] > 0 and summary["epochs_done"] == 2
    assert summary["tokens_seen"] > 0 and summary["examples_seen"] == 2 * summary["train_examples"]
    assert summary["cost_usd"] > 0 and summary["price_source"] == "cpu-2core"
    assert (run.train / weights).is_dir() and json.loads((run.train / "summary.json").read_text()) == summary
    lines = [json.loads(line) for line in (run.train / "metrics.jsonl").read_text().splitlines()]
    assert lines[0].keys() >= METRIC_KEYS and any("eval_loss" in line for line in lines)
    for epoch in (1, 2):
        record = json.loads((run.checkpoints / f"epoch-{epoch}" / "epoch.json").read_text())
        assert record["epoch"] == epoch and "eval_loss" in record
    assert summary["best"]["epoch"] in (1, 2)
    assert run.config_file.exists() and run.provenance_file.exists()


def test_lora_adapter_loads_with_peft_and_reproduces_the_trained_model(tiny_neox_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = run_dir(tmp_path)
    summary = train_cell(make_cell(tiny_neox_dir, learning_rate=5e-3), run, progress=False)
    assert summary["trainable_parameters"] < summary["base_parameters"]
    base = AutoModelForCausalLM.from_pretrained(tiny_neox_dir)
    tuned = PeftModel.from_pretrained(base, run.adapter).eval()
    epoch2 = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_neox_dir),
                                       run.checkpoints / "epoch-2").eval()
    ids = torch.tensor([[5, 17, 42, 99, 3]])
    with torch.no_grad():
        untouched = AutoModelForCausalLM.from_pretrained(tiny_neox_dir)(input_ids=ids).logits
        assert torch.allclose(tuned(input_ids=ids).logits, epoch2(input_ids=ids).logits)
        assert not torch.allclose(tuned(input_ids=ids).logits, untouched)
    assert json.loads((run.adapter / "labels.json").read_text())[0] == "autos"


def test_encoder_classifier_gets_a_head_for_the_label_set(tiny_bert_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    run = run_dir(tmp_path)
    summary = train_cell(make_cell(tiny_bert_dir, "full", count=32, learning_rate=1e-3), run, progress=False)
    model = AutoModelForSequenceClassification.from_pretrained(run.train / "model")
    labels = json.loads((run.train / "model" / "labels.json").read_text())
    assert model.config.num_labels == len(labels) == 8
    assert model.config.id2label[0] == labels[0] and model.config.label2id[labels[-1]] == 7
    assert summary["examples_seen"] == 2 * summary["train_examples"] and summary["eval_accuracy"] is not None


def test_original_recipe_runs_on_cpu_and_says_what_it_replaced(tiny_neox_dir, tmp_path):
    cell = make_cell(tiny_neox_dir, recipe="original", epochs=1, tokens_per_batch=None, max_seq_len=None)
    summary = train_cell(cell, run_dir(tmp_path), progress=False)
    plan = summary["plan"]
    assert (plan["packing"], plan["max_seq_len"], plan["batch_size"], plan["gradient_accumulation"]) == (
        "concat", 512, 1, 4)
    assert plan["gradient_checkpointing"] and plan["optimizer"] == "adamw_torch"
    assert any("paged_adamw_32bit" in note for note in summary["notes"])


def test_unknown_target_modules_list_the_real_ones(tiny_neox_dir, tmp_path):
    cell = make_cell(tiny_neox_dir).model_copy(deep=True)
    cell.lora.target_modules = ["q_proj", "dense"]
    with pytest.raises(UserError) as err:
        train_cell(cell, run_dir(tmp_path), progress=False)
    assert "target_modules: q_proj not found" in err.value.problem  # 'dense' exists, so it is not named
    assert "query_key_value" in err.value.fix and "dense_h_to_4h" in err.value.fix


def test_unknown_lora_option_is_named(tiny_neox_dir, tmp_path):
    cell = make_cell(tiny_neox_dir).model_copy(deep=True)
    cell.lora.options = {"use_dora": False, "rank_pattern_x": 1}
    with pytest.raises(UserError, match="rank_pattern_x") as err:
        train_cell(cell, run_dir(tmp_path), progress=False)
    assert "use_dora" in err.value.fix


def test_qlora_without_cuda_is_a_clear_error(tiny_neox_dir, tmp_path):
    with pytest.raises(UserError, match="CUDA"):
        train_cell(make_cell(tiny_neox_dir, "qlora"), run_dir(tmp_path), progress=False)
    assert not (tmp_path / "cell" / "train").exists()


def test_no_training_example_left_is_a_clear_error(tiny_neox_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    long_text = "The engine makes a rattling noise when the car idles at a red light. " * 60
    for split in ("train", "test"):
        rows = [{"text": long_text, "label": label} for label in ("autos", "space") for _ in range(5)]
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cell = CellConfig.model_validate({"model": {"name": str(tiny_neox_dir)}, "method": "lora",
                                      "data": {"source": str(data)}, "prompt": {"context_policy": "skip"}})
    with pytest.raises(UserError, match="no training examples left") as err:
        train_cell(cell, run_dir(tmp_path), progress=False)
    assert "context_policy" in err.value.fix


def test_label_with_the_template_delimiter_is_refused(tiny_neox_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"text": f"text number {i}", "label": "a###b" if i % 2 else "plain"} for i in range(12)]
    for split in ("train", "test"):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cell = CellConfig.model_validate({"model": {"name": str(tiny_neox_dir)}, "method": "lora",
                                      "data": {"source": str(data)}})
    with pytest.raises(UserError, match="a###b"):
        train_cell(cell, run_dir(tmp_path), progress=False)


def test_run_directory_rules(tiny_neox_dir, tmp_path):
    run = run_dir(tmp_path)
    cell = make_cell(tiny_neox_dir, count=8, epochs=1)
    with pytest.raises(UserError, match="no checkpoint"):
        train_cell(cell, run, resume=True, progress=False)
    first = train_cell(cell, run, progress=False)
    written = (run.train / "summary.json").stat().st_mtime_ns
    with pytest.raises(UserError, match="already trained") as err:
        train_cell(cell, run, progress=False)
    assert "--force" in err.value.fix
    assert (run.train / "summary.json").stat().st_mtime_ns == written  # refused: nothing rewritten
    again = train_cell(cell, run, force=True, progress=False)
    # --force trained again and wrote a new summary (wall times, rounded to ms, can coincide between runs)
    assert again["steps"] == first["steps"] and (run.train / "summary.json").stat().st_mtime_ns > written
    (run.train / "summary.json").unlink()  # now it looks like an unfinished run
    with pytest.raises(UserError, match="unfinished run") as err:
        train_cell(cell, run, progress=False)
    assert "--resume" in err.value.fix
    changed = cell.model_copy(update={"lora": cell.lora.model_copy(update={"r": 4})})
    with pytest.raises(UserError, match=r"lora\.r: 8 -> 4") as err:
        train_cell(changed, run, resume=True, progress=False)
    assert "--force" in err.value.fix


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(tiny_neox_dir, tmp_path, monkeypatch):
    run = run_dir(tmp_path)
    cell = make_cell(tiny_neox_dir, count=16, epochs=1, tokens_per_batch=256, save_steps=2)
    real_save = torch.save

    def disk_fills_at_step_4(obj, f, *args, **kwargs):
        if "checkpoint-4" in str(f):
            with open(f, "wb") as half:
                half.write(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_fills_at_step_4)
    with pytest.raises(UserError, match=r"no space left on .* while writing .*checkpoint-4") as err:
        train_cell(cell, run, progress=False)
    assert "checkpoint-2 is intact" in err.value.problem and "--resume" in err.value.fix
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["checkpoint-2"]
    state = json.loads((run.checkpoints / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    torch.load(run.checkpoints / "checkpoint-2" / "optimizer.pt", weights_only=True)
    monkeypatch.setattr(torch, "save", real_save)
    summary = train_cell(cell, run, resume=True, progress=False)  # space freed: the run carries on
    assert summary["resumed_from"].endswith("checkpoint-2") and summary["steps"] > 4


def test_out_of_memory_becomes_advice():
    from tunebench.train.engine import out_of_memory_is_user_error
    from tunebench.train.recipes import Device, resolve_plan

    cell = CellConfig.model_validate({"method": "lora"})
    plan = resolve_plan(cell, "causal", Device(cuda=True, bf16=True), 2048)
    with pytest.raises(UserError, match="out of GPU memory") as err, out_of_memory_is_user_error(cell, plan):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert "tokens_per_batch" in err.value.fix and "gradient_checkpointing" in err.value.fix
    assert "qlora" in err.value.fix


def test_report_to_tensorboard_writes_event_files_or_names_the_missing_package(tiny_neox_dir, tmp_path):
    run = run_dir(tmp_path)
    cell = make_cell(tiny_neox_dir, count=8, epochs=1, report_to=["tensorboard"])
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(UserError, match="pip install tensorboard"):
            train_cell(cell, run, progress=False)
        return
    train_cell(cell, run, progress=False)
    assert any((run.train / "tensorboard").iterdir())
