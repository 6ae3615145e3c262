"""A small byte-level BPE tokenizer trained on the spot, for GPU benchmarks (the device has no model hub)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

EOS = "<|endoftext|>"


def train_byte_bpe(texts: list[str], vocab_size: int, out: Path) -> Any:
    """Train on `texts`, save as a transformers fast tokenizer in `out` (EOS doubles as pad) and return it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)
    fast.save_pretrained(out)
    return fast
