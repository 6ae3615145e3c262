"""Cleaning: newsgroup headers/footers/quotes, whitespace, and input truncation (never of targets)."""

from __future__ import annotations

import json

from tunebench.config.schema import CleaningConfig, DataConfig
from tunebench.data import load_source
from tunebench.data.cleaning import clean_input, normalize_whitespace, truncate_text

MESSAGE = """From: pat@example.org (Pat Doe)
Subject: Re: which telescope for a beginner?
Organization: Stargazers United
Lines: 12

In article <123@example.org> sam@example.org writes:
> Is a 6 inch reflector enough to see the rings of Saturn?
> Or do I need something bigger?

Yes, a 6 inch reflector shows the rings clearly on a steady night.
Start with a low power eyepiece.

--
Pat Doe   |   amateur astronomer since 1979
"""


def test_newsgroup_stripping_follows_scikit_learn():
    headers = clean_input(MESSAGE, CleaningConfig(strip_headers=True))
    assert "From:" not in headers and "Organization" not in headers and "Pat Doe   |" not in headers
    assert "amateur astronomer" in headers  # only the headers went
    everything = clean_input(MESSAGE, CleaningConfig(strip_headers=True, strip_footers=True, strip_quotes=True))
    assert everything == ("Yes, a 6 inch reflector shows the rings clearly on a steady night.\n"
                          "Start with a low power eyepiece.")
    assert clean_input(MESSAGE, CleaningConfig()).startswith("From: pat@example.org")


def test_whitespace_normalisation_keeps_line_breaks():
    assert normalize_whitespace("  Ann:\t hi   there \r\nBob:  hello\r\n\r\n\r\n\r\nAnn: bye  ") == (
        "Ann: hi there\nBob: hello\n\nAnn: bye")
    raw = "a  b"
    assert clean_input(raw, CleaningConfig(normalize_whitespace=False)) == raw


def test_truncation_cuts_inputs_at_a_token_boundary(tiny_tokenizer):
    text = "The engine makes a rattling noise when the car idles at a red light."
    cut, was_cut = truncate_text(tiny_tokenizer, text, 5)
    assert was_cut and text.startswith(cut) and len(tiny_tokenizer(cut, add_special_tokens=False)["input_ids"]) == 5
    assert truncate_text(tiny_tokenizer, "short", 50) == ("short", False)


def test_loader_truncates_inputs_never_targets_and_counts(tmp_path, tiny_tokenizer):
    long_summary = "Anna and Ben will meet for lunch tomorrow at 12:30 at the usual place near the station."
    rows = [{"dialogue": "Anna: lunch tomorrow?\nBen: yes, 12:30 at the usual place. " * 6, "summary": long_summary},
            {"dialogue": "Anna: ok", "summary": long_summary}]
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = DataConfig(source=str(path), task="summarization", cleaning=CleaningConfig(max_input_tokens=8))
    loaded = load_source(cfg, tiny_tokenizer)
    first, second = loaded.splits["train"]
    assert loaded.truncated_inputs == 1
    assert len(tiny_tokenizer(first.input, add_special_tokens=False)["input_ids"]) == 8
    assert second.input == "Anna: ok" and first.target == second.target == long_summary
