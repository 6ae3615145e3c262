"""Parsing free-text answers into labels: normalisation, exact, prefix and containment matches, invalid."""

from __future__ import annotations

import pytest

from tunebench.evaluate.classify import parse_label

NEWSGROUPS = ["comp.sys.ibm.pc.hardware", "comp.sys.mac.hardware", "comp.os.ms-windows.misc", "sci.med",
              "sci.space", "rec.sport.baseball", "rec.sport.hockey", "talk.politics.mideast"]
SIMPLE = ["autos", "baseball", "cooking", "space"]


@pytest.mark.parametrize(("text", "expected"), [
    ("sci.med", "sci.med"),  # exact
    ("  SCI.MED.\n", "sci.med"),  # case, whitespace and trailing punctuation
    ("sci med", "sci.med"),  # punctuation normalised away
    ("comp.os.ms-windows.misc", "comp.os.ms-windows.misc"),
    ("rec.sport.baseball is the class", "rec.sport.baseball"),  # the text starts with a label
    ("comp.sys.mac", "comp.sys.mac.hardware"),  # the text is the start of exactly one label
    ("The class is sci.space, clearly.", "sci.space"),  # the text contains a label
    ("mideast", "talk.politics.mideast"),  # a label contains the text
])
def test_parse_finds_the_label(text, expected):
    assert parse_label(text, NEWSGROUPS) == expected


@pytest.mark.parametrize("text", [
    "",  # nothing
    "   \n ",  # only whitespace
    "!!!",  # only punctuation
    "comp.sys",  # the start of two labels: ambiguous
    "hardware",  # contained in two labels: ambiguous
    "rec.sport",  # ambiguous prefix
    "I think it is about cars",  # names no label
    "either sci.med or sci.space",  # contains two labels
])
def test_parse_refuses_ambiguous_or_unrelated_text(text):
    assert parse_label(text, NEWSGROUPS) is None


def test_parse_matches_whole_words_only():
    assert parse_label("spaceship", SIMPLE) is None  # 'space' is not a word of 'spaceship'
    assert parse_label("Class: Baseball", SIMPLE) == "baseball"
    assert parse_label("baseball\n\nThe text talks about a pitcher", SIMPLE) == "baseball"


def test_exact_match_wins_over_prefix():
    labels = ["sci", "sci.med"]
    assert parse_label("sci", labels) == "sci"
    assert parse_label("sci.med", labels) == "sci.med"
