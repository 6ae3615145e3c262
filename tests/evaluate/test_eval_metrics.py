"""ROUGE against values computed by hand, classification metrics, and the seeded bootstrap intervals."""

from __future__ import annotations

import random

import pytest

from tunebench.evaluate import metrics


def test_rouge_simple_pair_by_hand():
    # pred: the cat sat on the mat / ref: the cat is on the mat (6 tokens each)
    # unigram overlap: the×2, cat, on, mat = 5 → P = R = 5/6
    # bigrams: 5 each, shared: "the cat", "on the", "the mat" = 3 → 3/5
    # LCS: the cat on the mat = 5 → 5/6; one sentence, so Lsum = L
    scores = metrics.rouge_per_example(["the cat sat on the mat"], ["the cat is on the mat"])[0]
    assert scores["rouge1"] == pytest.approx(100 * 5 / 6)
    assert scores["rouge2"] == pytest.approx(100 * 3 / 5)
    assert scores["rougeL"] == pytest.approx(100 * 5 / 6)
    assert scores["rougeLsum"] == pytest.approx(100 * 5 / 6)


def test_rouge_uses_porter_stemming_by_hand():
    # stems: cats→cat, running→run, runs→run; "are", "the" are kept (3 letters or fewer are never stemmed)
    # pred [cat, are, run] / ref [the, cat, run]: unigram overlap 2 → 2/3; no shared bigram; LCS cat run = 2
    scores = metrics.rouge_per_example(["Cats are running."], ["The cat runs."])[0]
    assert scores["rouge1"] == pytest.approx(100 * 2 / 3)
    assert scores["rouge2"] == pytest.approx(0.0)
    assert scores["rougeL"] == pytest.approx(100 * 2 / 3)


def test_rouge_lsum_is_summary_level_by_hand():
    # The same two sentences in the other order. pred: ben wait | anna is late; ref: anna is late | ben wait.
    # rouge1: all 5 tokens shared → 100. rouge2: 4 bigrams each, shared "ben wait", "anna is", "is late" → 3/4.
    # rougeL over the whole text: LCS = "anna is late" = 3 of 5 → 60.
    # rougeLsum: each reference sentence finds its full LCS in one predicted sentence: 3 + 2 = 5 of 5 → 100.
    scores = metrics.rouge_per_example(["Ben waits. Anna is late."], ["Anna is late. Ben waits."])[0]
    assert scores["rouge1"] == pytest.approx(100.0)
    assert scores["rouge2"] == pytest.approx(75.0)
    assert scores["rougeL"] == pytest.approx(60.0)
    assert scores["rougeLsum"] == pytest.approx(100.0)


def test_rouge_mean_of_per_example_scores():
    preds, refs = ["the cat sat on the mat", "Cats are running."], ["the cat is on the mat", "The cat runs."]
    assert metrics.rouge(preds, refs)["rouge1"] == pytest.approx(100 * (5 / 6 + 2 / 3) / 2)


def test_sentence_lines_splits_sentences_and_lines():
    assert metrics.sentence_lines("Anna is late.  Ben waits! Ok?\r\nFine") == "Anna is late.\nBen waits!\nOk?\nFine"
    assert metrics.sentence_lines("  one sentence  ") == "one sentence"


def test_classification_metrics_with_invalid_answers():
    labels = ["a", "b", "c"]
    refs = ["a", "a", "b", "b", "c"]
    preds = ["a", None, "b", "a", "c"]
    result = metrics.classification_metrics(preds, refs, labels)
    assert result["accuracy"] == pytest.approx(3 / 5)
    # F1: a = 2·1/(2+2) = .5; b = 2·1/(1+2) = 2/3; c = 1 → macro over the true classes
    assert result["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    assert result["per_class"]["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert result["confusion"]["labels"] == ["a", "b", "c", metrics.INVALID]
    assert result["confusion"]["matrix"][0] == [1, 0, 0, 1]


def test_vectorized_macro_f1_equals_scikit_learn_on_every_resample():
    from sklearn.metrics import f1_score

    rng = random.Random(3)
    labels = ["w", "x", "y", "z", metrics.INVALID]
    refs = [rng.choice(labels[:4]) for _ in range(60)]
    preds = [r if rng.random() < 0.5 else rng.choice(labels) for r in refs]
    indices = metrics.resample_indices(len(refs), 25, seed=1)
    fast = metrics.macro_f1_resampled(preds, refs, indices)
    for row, value in zip(indices, fast, strict=True):
        r, p = [refs[i] for i in row], [preds[i] for i in row]
        assert value == pytest.approx(f1_score(r, p, labels=sorted(set(r)), average="macro", zero_division=0))


def test_bootstrap_intervals_are_seeded_and_bracket_the_estimate():
    values = [float(i % 3 == 0) for i in range(90)]
    first = metrics.mean_ci(values, resamples=500, seed=7)
    assert first == metrics.mean_ci(values, resamples=500, seed=7)
    assert first != metrics.mean_ci(values, resamples=500, seed=8)
    assert first[0] < sum(values) / len(values) < first[1]
    assert metrics.mean_ci(values, resamples=0) is None


def test_confusion_png_is_written(tmp_path):
    result = metrics.classification_metrics(["a", None], ["a", "b"], ["a", "b"])
    path = metrics.confusion_png(result["confusion"], tmp_path / "c.png", "t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
