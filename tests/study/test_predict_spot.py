"""Spot prices beside on-demand (issue 19, item 5): every spot price in the table has a dated source, a GPU
without one shows none (and says so), and the spot prediction adds the work redone after preemptions, from
the checkpoint interval and a stated, configurable preemption rate."""

from __future__ import annotations

import pytest
from rich.console import Console
from tinystudy import tiny_study, write_study

from tunebench import cost
from tunebench.cli import main
from tunebench.config.study import load_study
from tunebench.study.predict import (
    RESTART_S,
    CellPrediction,
    Figures,
    checkpoint_share,
    predict_cells,
    print_prediction,
)


def test_every_spot_price_has_a_dated_source_and_the_others_have_none():
    table = cost.price_table()
    priced = {name: p for name, p in table.items() if p.spot_price_per_hour is not None}
    assert {"h100", "h200", "a10g", "gcp-a3-highgpu-1g"} <= set(priced)
    for p in priced.values():
        assert p.spot_source and "http" in p.spot_source and p.spot_date
        assert 0 < p.spot_price_per_hour < p.price_per_hour
    for name in ("t4", "l4", "a100-40gb", "cpu-2core"):   # nothing sourced: no value, not a guess
        assert table[name].spot_price_per_hour is None and table[name].spot_source is None


def test_spot_cost_adds_half_a_checkpoint_interval_and_a_restart_per_preemption():
    c = CellPrediction("c", train_s=3600.0, eval_s=0.0, price_per_hour=4.0, spot_price_per_hour=2.0,
                       checkpoint_s=360.0, preemptions_per_hour=0.5)
    # 0.5 preemptions in the hour of training, each losing 180 s of training and the restart
    assert c.redone_s == pytest.approx(0.5 * (180 + RESTART_S))
    assert c.spot_usd == pytest.approx((3600 + 0.5 * (180 + RESTART_S)) / 3600 * 2.0)
    assert c.usd == pytest.approx(4.0)
    calm = CellPrediction("c", train_s=3600.0, eval_s=0.0, spot_price_per_hour=2.0, checkpoint_s=360.0)
    assert calm.spot_usd == pytest.approx(2.0)                   # rate 0: nothing redone
    assert CellPrediction("c", train_s=3600.0, eval_s=0.0).spot_usd is None   # no sourced spot price


def test_the_checkpoint_interval_follows_save_steps_and_epochs(tiny_llama_dir, tmp_path):
    study = load_study(write_study(tmp_path, tiny_study(tiny_llama_dir, "  - method: lora")))
    cfg = study.cells[0].config
    default = cfg.model_copy(update={"training": cfg.training.model_copy(update={"save_steps": None,
                                                                                   "epochs": 2})})
    assert checkpoint_share(default, 16) == pytest.approx(1 / 10)
    many = default.model_copy(update={"training": default.training.model_copy(update={"epochs": 20})})
    assert checkpoint_share(many, 16) == pytest.approx(1 / 20)   # an epoch end comes first
    every4 = default.model_copy(update={"training": default.training.model_copy(
        update={"save_steps": 4, "batch_size": 2})})
    assert checkpoint_share(every4, 16) == pytest.approx(4 / 16)   # 8 steps an epoch × 2 epochs


def test_the_prediction_prints_spot_with_its_assumption_and_a_configured_rate(tiny_llama_dir, tmp_path):
    text = tiny_study(tiny_llama_dir, "  - method: lora\n    training: {epochs: 2}\n    cost: {instance: h100}")
    study = load_study(write_study(tmp_path, text))
    figures = Figures(tps={(str(tiny_llama_dir), "lora"): [1000.0]},
                      eval_s_per_example={(str(tiny_llama_dir), "classification", "trained"): [0.5]})

    def predicted(rate: float) -> tuple[CellPrediction, str]:
        cells = [c.__class__(c.id, c.config.model_copy(update={"cost": c.config.cost.model_copy(
            update={"spot_preemptions_per_hour": rate})}), c.experiments) for c in study.cells]
        prediction = predict_cells(cells, None, figures)   # the figures given, not read from a store
        console = Console(record=True, width=400)
        print_prediction(prediction, console)
        return prediction.cells[0], " ".join(console.export_text().split())

    cell, said = predicted(0.1)
    assert cell.spot_usd is not None and cell.usd is not None and cell.spot_usd < cell.usd
    assert "assumed 0.1 preemption(s) per hour" in said and "cost.spot_preemptions_per_hour" in said
    assert "skypilot-catalog" in said and "before 2025-06" in said   # the spot price's source and date
    busy, said = predicted(6.0)
    assert busy.spot_usd > cell.spot_usd and "assumed 6 preemption(s) per hour" in said


def test_a_dry_run_on_an_instance_without_a_spot_price_says_so(tiny_llama_dir, tmp_path, capsys):
    study = write_study(tmp_path, tiny_study(tiny_llama_dir, "  - method: zero_shot\n    cost: {instance: t4}"))
    with pytest.raises(SystemExit) as caught:
        main(["run", "--dry-run", str(study), "--out", str(tmp_path / "runs")])
    said = " ".join(capsys.readouterr().out.split())
    assert not caught.value.code, said
    assert "no spot price" in said and "no sourced spot price for t4" in said and "h100" in said


def test_tunebench_prices_shows_spot_beside_on_demand(capsys):
    import json

    with pytest.raises(SystemExit) as caught:
        main(["prices", "--json"])
    assert not caught.value.code
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["h100"]["spot_price_per_hour"] == 3.348 and rows["h100"]["spot_date"]
    assert rows["t4"]["spot_price_per_hour"] is None
    with pytest.raises(SystemExit):
        main(["prices"])
    said = " ".join(capsys.readouterr().out.split())
    assert "spot $/hour" in said and "none sourced" in said
