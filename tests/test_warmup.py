"""The distortion-only warm-up of stage 1 and the checkpoints it selects on the validation split:
the loss, ``validate``, the centralized run, the strategy hook, the client and a federation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _client import client_train
from _data import SMOKE
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from test_strategies import FakeGrid

import fedrs.centralized as centralized
from fedrs import protocol
from fedrs.cli import main as cli
from fedrs.config import ExperimentConfig, load_config
from fedrs.errors import InputError
from fedrs.pipeline import load_run_data
from fedrs.train import (
    KeptCheckpoint,
    LocalTrainer,
    build_model,
    encode_rows,
    load_batch,
    psnr_db,
    refresh_statistics,
    validate,
)

pytestmark = pytest.mark.usefixtures("cache_env")


# ---------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["train.stage1_epochs=1", "train.no_bpp_epochs=2"], "train.no_bpp_epochs"),
        (["federation.stage1_rounds=1", "federation.no_bpp_rounds=2"], "federation.no_bpp_rounds"),
        (["train.no_bpp_epochs=-1"], "train.no_bpp_epochs"),
        (["data.max_validation=-1"], "data.max_validation"),
    ],
)
def test_warmup_longer_than_stage1_is_refused(overrides: list[str], key: str) -> None:
    with pytest.raises(InputError, match=key.replace(".", r"\.")):
        load_config(SMOKE, overrides)


def test_warmup_defaults_to_none() -> None:
    config = ExperimentConfig()
    assert config.train.no_bpp_epochs == 0 and config.federation.no_bpp_rounds == 0
    assert config.data.max_validation == 200
    fits = load_config(SMOKE, ["train.stage1_epochs=2", "train.no_bpp_epochs=2"])
    assert fits.train.no_bpp_epochs == 2


# ---------------------------------------------------------------------------- loss


def test_distortion_only_loss_has_no_rate_gradient() -> None:
    """Without the rate, ``rd`` is ``lmbda * distortion`` (bpp still reported) and the factorized
    bottleneck of z, which only the rate reads, gets no gradient."""
    config = load_config(SMOKE)
    data = load_run_data(config.data)
    model = build_model(config)
    batch = load_batch(data.archive, data.train_rows[:8], model.modalities)
    bottleneck = {
        n for n, _ in model.named_parameters() if ".entropy_bottleneck." in n and "codecs." in n
    }
    assert bottleneck
    grads: dict[bool, dict[str, torch.Tensor | None]] = {}
    for rate in (True, False):
        trainer = LocalTrainer(
            model, data.archive, data.train_rows, config, stage=1, seed=3, rate=rate
        )
        model.zero_grad(set_to_none=True)
        terms, _ = trainer.backward(batch)
        lmbda = config.loss.lmbda
        expected = lmbda * terms["distortion"] + (terms["bpp"] if rate else 0.0)
        torch.testing.assert_close(terms["rd"], expected)
        assert float(terms["bpp"].detach()) > 0
        grads[rate] = {n: p.grad for n, p in model.named_parameters()}
    for name in bottleneck:
        with_rate, without = grads[True][name], grads[False][name]
        assert with_rate is not None and float(with_rate.abs().sum()) > 0, name
        assert without is None or float(without.abs().sum()) == 0.0, name
    # the distortion still trains the transforms
    g_a = [n for n in grads[False] if ".g_a." in n]
    assert g_a and all(grads[False][n] is not None for n in g_a)


# ---------------------------------------------------------------------------- validate


def test_validate_pools_modalities_by_patches() -> None:
    config = load_config(SMOKE)
    data = load_run_data(config.data)
    split = data.archive.metadata["split"].to_numpy(dtype=object)
    assert set(split[data.validation_rows]) == {"validation"}
    assert not set(data.validation_rows) & set(data.query_rows)
    model = build_model(config)
    figures = validate(model, data)
    coded = encode_rows(model, data.archive, data.validation_rows, decode=True)
    pixels = 120 * 120
    for m in ("s1", "s2"):
        assert figures["bpp"][m] == pytest.approx(coded["bits"][m] / (coded["patches"][m] * pixels))
        assert figures["psnr"][m] == pytest.approx(
            psnr_db(m, coded["sq_error"][m], coded["values"][m])
        )
    counts = coded["patches"]
    total = counts["s1"] + counts["s2"]
    assert figures["bpp_all"] == pytest.approx(sum(coded["bits"].values()) / (total * pixels))
    weighted = sum(counts[m] * figures["psnr"][m] for m in ("s1", "s2")) / total
    assert figures["psnr_all"] == pytest.approx(weighted)
    assert figures["patches"] == counts
    again = validate(model, data.archive, data.validation_rows)
    assert again["bpp_all"] == figures["bpp_all"]
    with pytest.raises(InputError, match="rows"):
        validate(model, data.archive)


def test_kept_checkpoint_keeps_the_best_copy() -> None:
    psnr, bpp = KeptCheckpoint("psnr"), KeptCheckpoint("bpp")
    state = {"w": torch.zeros(2)}
    assert psnr.offer(1, 30.0, state) and bpp.offer(1, 0.5, state)
    state["w"] += 1  # a copy was kept
    assert not psnr.offer(2, 29.0, state) and not psnr.offer(3, 30.0, state)  # ties: earlier
    assert not bpp.offer(2, float("nan"), state) and not bpp.offer(3, None, state)
    assert psnr.step == 1 and torch.equal(psnr.restore()["w"], torch.zeros(2))
    assert bpp.offer(4, 0.25, state) and bpp.record("round") == {"round": 4, "score": 0.25}
    with pytest.raises(FloatingPointError):
        KeptCheckpoint("psnr").restore()
    with pytest.raises(InputError, match="criterion"):
        KeptCheckpoint("map")


# ---------------------------------------------------------------------------- centralized


def test_centralized_warmup_selects_and_restores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stage 1 of 4 epochs, 2 distortion-only: the validation scores (set here) make epoch 1 the
    best PSNR and epoch 3 the lowest bpp; the rate epochs start from epoch 1's model and stage 2
    from epoch 3's."""
    config = load_config(
        SMOKE, ["train.stage1_epochs=4", "train.no_bpp_epochs=2", "train.stage2_epochs=1"]
    )
    scores = iter([(30.0, 2.0), (20.0, 1.0), (25.0, 0.5), (26.0, 0.9)])  # (psnr, bpp) by epoch
    seen: list[dict[str, torch.Tensor]] = []

    def fake_validate(model: Any, data: Any) -> dict[str, Any]:
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        psnr, bpp = next(scores)
        per = {"s1": None, "s2": None}
        return {"bpp": per, "psnr": per, "bpp_all": bpp, "psnr_all": psnr, "patches": {}}

    monkeypatch.setattr(centralized, "validate", fake_validate)
    summary = centralized.run_centralized(config, tmp_path)
    assert len(seen) == 4  # after each stage-1 epoch, never in stage 2
    assert summary["selection"] == {
        "psnr": {"epoch": 1, "score": 30.0},
        "bpp": {"epoch": 3, "score": 0.5},
        "selected": "bpp",
        "selected_epoch": 3,
        "validation_patches": len(load_run_data(config.data).validation_rows),
    }
    assert json.loads((tmp_path / "summary.json").read_text())["selection"] == summary["selection"]
    history = summary["history"]
    assert [h.get("val/psnr") for h in history] == [30.0, 20.0, 25.0, 26.0, None]
    assert [h.get("rate") for h in history] == [0.0, 0.0, 1.0, 1.0, None]
    assert [h.get("val/selected_epoch") for h in history] == [None, 1.0, None, 3.0, None]

    data = load_run_data(config.data)

    def one_epoch(start: dict[str, torch.Tensor], **kwargs: Any) -> dict[str, torch.Tensor]:
        model = build_model(config)
        model.load_state_dict(start)
        LocalTrainer(model, data.archive, data.train_rows, config, **kwargs).train(1)
        return model.state_dict()

    # the first rate epoch started from epoch 1's model (best PSNR), not epoch 2's
    after_3 = one_epoch(seen[0], stage=1, seed=(0, 1, 1))
    # stage 2 started from epoch 3's model (lowest bpp), not the last epoch's
    final = one_epoch(seen[2], stage=2, seed=(0, 2))
    model = build_model(config)
    model.load_state_dict(final)
    refresh_statistics(model, data.archive, data.train_rows, config)  # before the evaluation
    final = model.state_dict()
    trained = torch.load(tmp_path / "model.pt")
    for key in final:
        assert torch.equal(after_3[key], seen[2][key]), key
        assert torch.equal(trained[key], final[key]), key


# ---------------------------------------------------------------------------- strategy hook


def _state(value: float) -> ArrayRecord:
    return ArrayRecord(
        {
            "codecs.s1.w": Array(np.full(2, value, dtype=np.float32)),
            "hash_head.bn.running_mean": Array(np.full(2, value, dtype=np.float32)),
        }
    )


def test_replace_global_is_what_the_next_round_starts_from(task_identity: None) -> None:
    """Broadcast, merge base (a local key keeps its global value) and FedAdam's own copy."""
    from fedrs.strategies import build_strategy

    strategy = build_strategy(
        "fedadam", min_train_nodes=1, min_available_nodes=1, local_keys=["running_"]
    )
    grid = FakeGrid([1])

    def sent(messages: Any) -> np.ndarray:
        (message,) = list(messages)
        return np.asarray(message.content.array_records["arrays"]["codecs.s1.w"].numpy())

    assert sent(strategy.configure_train(1, _state(1.0), ConfigRecord(), grid))[0] == 1.0
    strategy.replace_global(_state(5.0))
    (instruction,) = list(strategy.configure_train(2, _state(2.0), ConfigRecord(), grid))
    assert instruction.content.array_records["arrays"]["codecs.s1.w"].numpy()[0] == 5.0
    np.testing.assert_array_equal(strategy.primary.current_arrays["codecs.s1.w"], [5.0, 5.0])
    content = RecordDict(
        {
            "arrays": ArrayRecord({"codecs.s1.w": Array(np.full(2, 6.0, dtype=np.float32))}),
            "metrics": MetricRecord({"num-examples": 10.0, "num-examples-s1": 10.0}),
        }
    )
    merged, _ = strategy.aggregate_train(2, [Message(content, reply_to=instruction)])
    assert merged is not None
    np.testing.assert_array_equal(merged["hash_head.bn.running_mean"].numpy(), [5.0, 5.0])
    assert float(merged["codecs.s1.w"].numpy()[0]) > 5.0  # a step from 5 towards 6
    # once: the round after uses the model it is given
    assert sent(strategy.configure_train(3, _state(3.0), ConfigRecord(), grid))[0] == 3.0


# ---------------------------------------------------------------------------- client


def test_client_leaves_the_rate_out_when_told(task_identity: None) -> None:
    from fedrs.settings import RunSettings

    settings = RunSettings(config_path=str(SMOKE))
    config = settings.experiment()
    arrays = ArrayRecord(build_model(config).state_dict())
    lmbda = config.loss.lmbda
    for rate in (None, False):
        values = {} if rate is None else {protocol.RATE: rate}
        metrics = client_train(settings, 2, arrays=arrays, config=values)
        rate_term = metrics["bpp"] if rate is None else 0.0
        assert metrics["loss"] == pytest.approx(rate_term + lmbda * metrics["distortion"])
        assert metrics["bpp"] > 0


def test_server_selection_survives_a_restart(tmp_path: Path) -> None:
    """What ``latest.json`` records (round, score, file) brings the kept models back."""
    from fedrs.selection import Selection

    config = load_config(
        SMOKE, ["federation.stage1_rounds=3", "federation.no_bpp_rounds=1", "federation.rounds=4"]
    )
    selection = Selection(config, tmp_path, None)
    assert [selection.rate(r) for r in (1, 2, 3, 4)] == [False, True, True, True]
    assert [selection.validates(r) for r in (1, 2, 3, 4)] == [True, True, True, False]
    assert [selection.ends_phase(r) for r in (1, 2, 3, 4)] == [True, False, True, False]

    def figures(psnr: float, bpp: float) -> dict[str, float]:
        return {"psnr_all": psnr, "bpp_all": bpp}

    selection.offer(1, figures(30.0, 2.0), _state(1.0).to_torch_state_dict())
    selection.offer(2, figures(20.0, 1.0), _state(2.0).to_torch_state_dict())
    selection.offer(3, figures(20.0, 0.5), _state(3.0).to_torch_state_dict())
    record = selection.record()
    assert {c: (r["round"], r["score"]) for c, r in record.items()} == {
        "psnr": (1, 30.0),
        "bpp": (3, 0.5),
    }
    selection.prune()
    kept_files = sorted(p.name for p in (tmp_path / "checkpoints").glob("kept-*.pt"))
    assert kept_files == ["kept-bpp.round-0003.pt", "kept-psnr.round-0001.pt"]
    again = Selection(config, tmp_path, {"round": 3, "kept": record})
    assert again.selected().step == 3
    assert torch.equal(again.selected().restore()["codecs.s1.w"], torch.full((2,), 3.0))
    assert again.summary(4, 28)["selected_round"] == 3
    assert again.summary(2, 28)["selected"] is None  # stage 1 not over


# ---------------------------------------------------------------------------- federation


@pytest.mark.slow
def test_federation_warmup_validates_and_records_the_selection(tmp_path: Path) -> None:
    out = tmp_path / "run"
    code = cli(
        [
            "simulate",
            "--config",
            str(SMOKE),
            "--out",
            str(out),
            "--rounds",
            "3",
            "--set",
            "federation.stage1_rounds=2",
            "--set",
            "federation.no_bpp_rounds=1",
        ]
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    selection = summary["selection"]
    assert selection["psnr"]["round"] == 1 and selection["bpp"]["round"] == 2
    assert (selection["selected"], selection["selected_round"]) == ("bpp", 2)
    history = summary["history"]
    assert [h["round"] for h in history] == [1, 2, 3]
    for row in history[:2]:
        assert row["val/psnr"] > 0 and row["val/bpp"] > 0 and "val/psnr_s2" in row
    assert not any(k.startswith("val/") for k in history[2])
    assert [h.get("val/selected_round") for h in history] == [1.0, 2.0, None]
    assert selection["psnr"]["score"] == history[0]["val/psnr"]
    assert selection["bpp"]["score"] == history[1]["val/bpp"]
    latest = json.loads((out / "checkpoints" / "latest.json").read_text())
    assert {c: r["round"] for c, r in latest["kept"].items()} == {"psnr": 1, "bpp": 2}
    for record in latest["kept"].values():
        assert (out / "checkpoints" / record["file"]).is_file()

    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=summary["tracking_uri"])
    for key in ("val/psnr", "val/bpp"):
        points = client.get_metric_history(summary["mlflow_run_id"], key)
        assert sorted(p.step for p in points) == [1, 2], key
