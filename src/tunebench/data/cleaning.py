"""Cleaning inputs: newsgroup headers, signature footers and quoted replies, whitespace, and a token cap.

The newsgroup options are scikit-learn's own heuristics (what `fetch_20newsgroups(remove=...)` applies), in
its order: headers, then footers, then quotes. Truncation applies to inputs only, never to labels or reference
summaries, and cuts at a token boundary of the given tokenizer.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunebench.config.schema import CleaningConfig

_INLINE_SPACE = re.compile(r"[^\S\n]+")
_BLANK_RUNS = re.compile(r"\n{3,}")
TOKENIZE_BATCH = 512  # texts per tokenizer call: fast tokenizers batch in Rust


def strip_newsgroup(text: str, *, headers: bool, footers: bool, quotes: bool) -> str:
    from sklearn.datasets import _twenty_newsgroups as newsgroups

    if headers:
        text = newsgroups.strip_newsgroup_header(text)
    if footers:
        text = newsgroups.strip_newsgroup_footer(text)
    if quotes:
        text = newsgroups.strip_newsgroup_quoting(text)
    return text


def normalize_whitespace(text: str) -> str:
    """One space between words, no trailing spaces, at most one blank line; line breaks kept (dialogues)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(_INLINE_SPACE.sub(" ", line).strip() for line in text.split("\n"))
    return _BLANK_RUNS.sub("\n\n", text).strip()


def clean_input(text: str, cleaning: CleaningConfig) -> str:
    if cleaning.strip_headers or cleaning.strip_footers or cleaning.strip_quotes:
        text = strip_newsgroup(text, headers=cleaning.strip_headers, footers=cleaning.strip_footers,
                               quotes=cleaning.strip_quotes)
    return normalize_whitespace(text) if cleaning.normalize_whitespace else text


def clean_target(text: str, cleaning: CleaningConfig) -> str:
    return normalize_whitespace(text) if cleaning.normalize_whitespace else text.strip()


def truncate_texts(tokenizer: Any, texts: list[str], max_tokens: int) -> tuple[list[str], list[bool]]:
    """Each text cut to at most `max_tokens` tokens (no special tokens counted), and whether it was cut."""
    out: list[str] = []
    cut: list[bool] = []
    for start in range(0, len(texts), TOKENIZE_BATCH):
        batch = texts[start:start + TOKENIZE_BATCH]
        encoded = tokenizer(batch, add_special_tokens=False, return_offsets_mapping=tokenizer.is_fast)
        for i, text in enumerate(batch):
            ids = encoded["input_ids"][i]
            if len(ids) <= max_tokens:
                out.append(text)
                cut.append(False)
                continue
            if tokenizer.is_fast:
                out.append(text[:encoded["offset_mapping"][i][max_tokens - 1][1]])
            else:
                out.append(tokenizer.decode(ids[:max_tokens]))
            cut.append(True)
    return out, cut


def truncate_text(tokenizer: Any, text: str, max_tokens: int) -> tuple[str, bool]:
    texts, cut = truncate_texts(tokenizer, [text], max_tokens)
    return texts[0], cut[0]



def label_key(label: str) -> str:
    """What two spellings of one class share: Unicode form (NFKC), case and whitespace folded."""
    import unicodedata

    return " ".join(unicodedata.normalize("NFKC", label).casefold().split())


def label_variants(counts: dict[str, int]) -> dict[str, list[str]]:
    """Labels that are the same class but for case, whitespace or Unicode form: key -> spellings, most rows first."""
    groups: dict[str, list[str]] = {}
    for label in counts:
        groups.setdefault(label_key(label), []).append(label)
    return {key: sorted(spellings, key=lambda s: (-counts[s], s))
            for key, spellings in groups.items() if len(spellings) > 1}
