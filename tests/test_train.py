"""Local training, evaluation and the centralized run on a tiny synthetic archive."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _data import SMOKE

from fedrs.centralized import run_centralized
from fedrs.cli import main as cli
from fedrs.config import load_config
from fedrs.errors import InputError
from fedrs.optim import GradientReport
from fedrs.pipeline import load_run_data
from fedrs.train import (
    LocalTrainer,
    build_model,
    encode_rows,
    evaluate,
    load_batch,
    refresh_statistics,
    train_local,
)

pytestmark = pytest.mark.usefixtures("cache_env")


def test_run_data_splits_are_disjoint_and_capped() -> None:
    config = load_config(SMOKE)
    data = load_run_data(config.data)
    split = data.archive.metadata["split"].to_numpy(dtype=object)
    assert set(split[data.train_rows]) == {"train"}
    assert set(split[data.query_rows]) == {"test"}
    assert len(data.query_rows) == config.data.max_queries
    assert len(data.database_rows) == config.data.max_database
    assert not set(data.query_rows) & set(data.database_rows)


def test_zero_caps_evaluate_the_whole_test_and_train_splits() -> None:
    capped = load_config(SMOKE)
    # eval.max_queries / eval.max_database are other names of the [data] caps
    config = load_config(SMOKE, ["data.max_queries=0", "eval.max_database=0"])
    assert (config.data.max_queries, config.data.max_database) == (0, 0)
    assert "max_database" not in config.to_dict()["eval"]  # kept (and written) once
    assert load_config(None, {"eval.max_queries": 7}).data.max_queries == 7
    data = load_run_data(config.data)
    split = data.archive.metadata["split"].to_numpy(dtype=object)
    np.testing.assert_array_equal(data.query_rows, np.flatnonzero(split == "test"))
    np.testing.assert_array_equal(data.database_rows, np.flatnonzero(split == "train"))
    assert len(data.query_rows) > capped.data.max_queries
    assert len(data.database_rows) > capped.data.max_database
    figures = evaluate(build_model(config), data, config)
    assert (figures["eval_queries"], figures["eval_database"]) == (
        len(data.query_rows),
        len(data.database_rows),
    )


def test_streamed_evaluation_equals_one_whole_batch() -> None:
    from fedrs.codes import pack_codes
    from fedrs.retrieval import evaluate_retrieval

    config = load_config(SMOKE)
    data = load_run_data(config.data)
    model = build_model(config)
    rows = data.query_rows
    whole = encode_rows(model, data.archive, rows, batch_size=len(rows), decode=True)
    streamed = encode_rows(model, data.archive, rows, batch_size=5, decode=True, packed=True)
    # packed bits and byte labels, batch by batch: the same codes as one whole batch
    assert streamed["codes"].dtype == np.uint8
    assert streamed["codes"].shape == (len(rows), config.model.hash_bits // 8)
    np.testing.assert_array_equal(streamed["codes"], pack_codes(whole["codes"]))
    np.testing.assert_array_equal(streamed["labels"], whole["labels"])
    assert (streamed["bits"], streamed["patches"]) == (whole["bits"], whole["patches"])
    assert streamed["values"] == whole["values"]
    for modality, error in whole["sq_error"].items():
        assert streamed["sq_error"][modality] == pytest.approx(error, rel=1e-9)
    assert streamed["encode_s"] > 0 and streamed["decode_s"] > 0
    # the evaluation's mAP is that of the unstreamed codes ranked whole
    figures = evaluate(model, data, config)
    database = encode_rows(
        model, data.archive, data.database_rows, batch_size=len(data.database_rows)
    )
    expected = evaluate_retrieval(
        whole["codes"], database["codes"], whole["labels"], database["labels"], config.eval.ks
    )
    for key, value in expected.items():
        assert figures[key] == pytest.approx(value, abs=1e-12), key
    for key in ("map@20", "map@20_min_k_r"):
        low, high = figures[f"{key}_ci_low"], figures[f"{key}_ci_high"]
        assert 0.0 <= low <= figures[key] <= high <= 1.0
        assert high > low  # 24 queries whose APs differ
    assert figures["encode_s_per_10k"] > 0 and figures["decode_s_per_10k"] > 0
    # the interval is the bootstrap's for the run's seed: the same again
    assert evaluate(model, data, config)["map@20_ci_low"] == figures["map@20_ci_low"]


def test_smoke_training_lowers_loss_and_beats_random_codes() -> None:
    """Figures seen: stage-1 loss ~169 -> stage-2 rd lower; mAP@20 ~0.70 vs ~0.47 random;
    mAP@20 min(k,R) ~0.54 vs ~0.28 random (k = 100 >= the 48-patch database: both equal)."""
    config = load_config(SMOKE, ["train.max_batches=8"])
    data = load_run_data(config.data)
    model = build_model(config)
    before = evaluate(model, data, config)
    first = train_local(model, data.archive, data.train_rows, config, stage=1, epochs=1, seed=0)
    again = train_local(model, data.archive, data.train_rows, config, stage=1, epochs=1, seed=1)
    assert again["rd"] < first["rd"]
    hashing = [
        train_local(model, data.archive, data.train_rows, config, stage=2, epochs=1, seed=s)
        for s in range(2, 6)
    ]
    assert hashing[-1]["hash"] < hashing[0]["hash"]
    after = evaluate(model, data, config)
    assert after["map@20_random"] == pytest.approx(before["map@20_random"])
    assert after["map@20"] > after["map@20_random"] + 0.05
    # both mAP conventions and their random-code baselines at every k, and the sizes used
    for k in config.eval.ks:
        names = ("", "_random", "_min_k_r", "_min_k_r_random")
        assert all(0.0 <= after[f"map@{k}{name}"] <= 1.0 for name in names), k
        assert after[f"map@{k}_min_k_r"] <= after[f"map@{k}"] + 1e-12
        assert after[f"map@{k}_min_k_r_random"] <= after[f"map@{k}_random"] + 1e-12
    assert after["map@20_min_k_r"] > after["map@20_min_k_r_random"]
    sizes = (after["eval_queries"], after["eval_database"])
    assert sizes == (len(data.query_rows), len(data.database_rows))
    assert after["bpp"]["s1"] > 0 and after["bpp"]["s2"] > 0
    assert np.isfinite(after["psnr"]["s1"]) and np.isfinite(after["psnr"]["s2"])


def test_training_is_reproducible_for_a_seed() -> None:
    config = load_config(SMOKE)
    data = load_run_data(config.data)
    states = []
    for _ in range(2):
        model = build_model(config)
        train_local(model, data.archive, data.train_rows, config, stage=2, epochs=1, seed=(0, 3))
        states.append(model.state_dict())
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key


def test_single_modality_trainer_touches_only_its_codec() -> None:
    config = load_config(SMOKE)
    data = load_run_data(config.data)
    model = build_model(config)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_local(model, data.archive, data.train_rows, config, modalities=("s1",), stage=2, epochs=1)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("codecs.s1.") for k in changed)
    assert not any(k.startswith("codecs.s2.") for k in changed)
    with pytest.raises(InputError, match="stage"):
        train_local(model, data.archive, data.train_rows, config, stage=3, epochs=1)


def test_codes_come_from_bitstreams() -> None:
    config = load_config(SMOKE)
    data = load_run_data(config.data)
    model = build_model(config)
    encoded = encode_rows(model, data.archive, data.query_rows[:6])
    batch = load_batch(data.archive, data.query_rows[:6], model.modalities)
    model.eval()
    with torch.no_grad():
        forward = model(batch)["codes"].numpy()
    np.testing.assert_array_equal(encoded["codes"], forward)


def test_centralized_cli_writes_summary(tmp_path: Path) -> None:
    out = tmp_path / "central"
    assert cli(["centralized", "--config", str(SMOKE), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    for key in ("map@20", "map@20_random", "wall_s", "config"):
        assert key in summary
    assert summary["map@20_min_k_r"] <= summary["map@20"]
    assert 0.0 <= summary["map@20_min_k_r_random"] <= summary["map@20_random"]
    assert (summary["eval_queries"], summary["eval_database"]) == (24, 48)  # smoke.toml's caps
    assert set(summary["bpp"]) == {"s1", "s2"} and set(summary["psnr"]) == {"s1", "s2"}
    assert summary["epochs"] == 2
    assert summary["config"]["name"] == "smoke"
    assert (out / "model.pt").is_file() and (out / "config.toml").is_file()
    assert load_config(out / "config.toml") == load_config(SMOKE)


def test_centralized_cli_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nlr = -1\n")
    assert cli(["centralized", "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.lr" in err[0]


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_proximal_gradient_is_added_after_mgda_unscaled() -> None:
    """FedProx's pull is mu * (w - w_global) on every covered parameter, g_a included, however
    MGDA weighs the objectives (smoke model, stage 2: the hashing gradient dominates, so MGDA
    weighs rate-distortion ~0.99 on g_a; adding the term before MGDA gave 2 x 0.85 of the pull)."""
    config = load_config(SMOKE)
    assert config.train.mgda and config.train.pcgrad
    data = load_run_data(config.data)
    model = build_model(config)
    batch = load_batch(data.archive, data.train_rows[:8], model.modalities)
    noise = torch.Generator().manual_seed(5)
    # the received global model: everything but the hash head (as if it were kept local)
    reference = {
        n: p.detach() - 0.01 * torch.randn(p.shape, generator=noise)
        for n, p in model.named_parameters()
        if not n.startswith("hash_head.")
    }

    def step(
        mu: float, ref: dict[str, torch.Tensor] | None
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], GradientReport]:
        trainer = LocalTrainer(
            model, data.archive, data.train_rows, config, stage=2, proximal_mu=mu, reference=ref
        )
        model.zero_grad(set_to_none=True)
        terms, report = trainer.backward(batch)
        return _grads(model), terms, report

    plain, plain_terms, plain_report = step(0.0, None)
    assert plain_report.mgda_weights is not None
    assert abs(plain_report.mgda_weights[0] - 0.5) > 0.4  # far from the even split
    unchanged, terms, _ = step(0.0, reference)  # mu = 0: nothing added
    assert "prox" not in terms and "prox" not in plain_terms
    assert plain.keys() == unchanged.keys()
    for name in plain:
        assert torch.equal(plain[name], unchanged[name]), name

    mu = 0.5
    pulled, terms, report = step(mu, reference)
    assert report.mgda_weights == plain_report.mgda_weights  # the proximal term is not weighed
    params = dict(model.named_parameters())
    encoder = {n for n in params if ".g_a." in n}
    assert encoder and encoder <= pulled.keys() and encoder <= reference.keys()
    squares = 0.0
    for name, grad in pulled.items():
        if name in reference:
            pull = mu * (params[name].detach() - reference[name])
            torch.testing.assert_close(grad, plain[name] + pull, rtol=1e-6, atol=1e-7)
            squares += float(pull.pow(2).sum()) / mu**2
        else:  # not received: no proximal term
            assert name.startswith("hash_head.") and torch.equal(grad, plain[name]), name
    assert float(terms["prox"]) == pytest.approx(0.5 * mu * squares, rel=1e-4)


def test_local_trainer_keeps_adam_across_epochs() -> None:
    """``train(1)`` twice on one trainer is ``train_local(epochs=2)``; a fresh Adam per epoch
    (the same batches and noise) is not."""
    config = load_config(SMOKE)
    data = load_run_data(config.data)
    states = []
    for kind in ("train_local", "kept", "fresh"):
        model = build_model(config)
        if kind == "train_local":
            train_local(model, data.archive, data.train_rows, config, stage=2, epochs=2, seed=4)
        else:
            trainer = LocalTrainer(model, data.archive, data.train_rows, config, stage=2, seed=4)
            trainer.train(1)
            if kind == "fresh":
                trainer.optimizer.state.clear()  # what a new torch.optim.Adam starts from
            trainer.train(1)
        states.append(model.state_dict())
    one_call, kept, fresh = states
    for key in one_call:
        assert torch.equal(one_call[key], kept[key]), key
    assert any(not torch.equal(one_call[key], fresh[key]) for key in one_call)


@pytest.mark.parametrize("stage", [1, 2])
def test_the_density_of_z_has_its_own_learning_rate(stage: int) -> None:
    """``train.density_lr_scale`` sets the learning rate of the entropy bottlenecks' density in
    both stages, apart from the rest of the codec (``codec_lr_scale`` in stage 2)."""
    config = load_config(SMOKE, {"train.density_lr_scale": 10.0, "train.lr": 0.002})
    data = load_run_data(config.data)
    model = build_model(config)
    trainer = LocalTrainer(model, data.archive, data.train_rows, config, stage=stage)
    lrs = {id(p): group["lr"] for group in trainer.optimizer.param_groups for p in group["params"]}
    density = {id(p) for m in model.modalities for p in model.codec(m).density_parameters()}
    codec = {id(p) for m in model.modalities for p in model.codec(m).parameters()} - density
    assert density and codec
    assert sorted({lrs[i] for i in density}) == pytest.approx([0.02])
    assert sorted({lrs[i] for i in codec}) == pytest.approx([0.002 if stage == 1 else 0.0002])
    hashed = [lrs.get(id(p)) for p in model.hash_parameters()]
    if stage == 1:
        assert hashed == [None] * len(hashed)  # not trained
    else:
        assert hashed == pytest.approx([0.002] * len(hashed))
    before = [
        p.detach().clone() for m in model.modalities for p in model.codec(m).density_parameters()
    ]
    trainer.train(1)
    after = [p for m in model.modalities for p in model.codec(m).density_parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_adam_state_travels_between_trainers() -> None:
    """``train_local(optimizer_state=...)`` continues the Adam state of the previous call
    (steps add up, moments are those reached); a state of other parameters is ignored."""
    config = load_config(SMOKE)
    data = load_run_data(config.data)
    model = build_model(config)
    kept: dict[str, np.ndarray] = {}
    first = train_local(
        model, data.archive, data.train_rows, config, stage=2, epochs=1, optimizer_state=kept
    )
    steps = {k: float(v[0]) for k, v in kept.items() if k.endswith("/step")}
    assert steps and set(steps.values()) == {first["batches"]}
    reached = {k: v.copy() for k, v in kept.items()}
    trainer = LocalTrainer(model, data.archive, data.train_rows, config, stage=2, seed=1)
    assert trainer.load_optimizer_state(reached)
    names = dict(model.named_parameters())
    for key, value in reached.items():
        name, field_ = key.rsplit("/", 1)
        np.testing.assert_array_equal(
            trainer.optimizer.state[names[name]][field_].cpu().numpy().reshape(value.shape), value
        )
    second = train_local(
        model, data.archive, data.train_rows, config, stage=2, epochs=1, optimizer_state=kept
    )
    assert {float(v[0]) for k, v in kept.items() if k.endswith("/step")} == {
        first["batches"] + second["batches"]
    }
    # stage 1 trains the codecs only: the stage-2 state names the hash head too, so it is
    # refused as a whole, and so is a state of another shape
    stage1 = LocalTrainer(model, data.archive, data.train_rows, config, stage=1)
    assert not stage1.load_optimizer_state(reached)
    assert not stage1.optimizer.state
    bad = dict(reached)
    conv = next(k for k, v in reached.items() if v.ndim == 4)
    bad[conv] = reached[conv][..., :1]
    fresh = LocalTrainer(model, data.archive, data.train_rows, config, stage=2)
    assert not fresh.load_optimizer_state(bad)
    assert not fresh.optimizer.state


def test_centralized_run_keeps_one_optimizer_a_stage(tmp_path: Path) -> None:
    """A centralized run's stages are ``train_local`` calls of all their epochs (seeds
    ``(seed, stage)``), not one call (one fresh Adam) an epoch; every epoch is still reported."""
    overrides = ["train.stage1_epochs=2", "train.stage2_epochs=2"]
    config = load_config(SMOKE, overrides)
    seen: list[tuple[int, int, int]] = []
    run_centralized(config, tmp_path, on_epoch=lambda s, e, n, _m: seen.append((s, e, n)))
    assert seen == [(1, 1, 2), (1, 2, 2), (2, 1, 2), (2, 2, 2)]
    trained = torch.load(tmp_path / "model.pt")
    data = load_run_data(config.data)
    model = build_model(config)
    for stage in (1, 2):
        train_local(
            model, data.archive, data.train_rows, config, stage=stage, epochs=2, seed=(0, stage)
        )
    refresh_statistics(model, data.archive, data.train_rows, config)  # then the evaluation
    expected = model.state_dict()
    assert trained.keys() == expected.keys()
    for key in expected:
        assert torch.equal(trained[key], expected[key]), key


def test_built_in_defaults_are_the_default_experiment() -> None:
    """`fedrs simulate` without --config (``make demo``) runs experiments/default.toml."""
    default = Path(__file__).resolve().parents[1] / "experiments" / "default.toml"
    assert load_config(None).to_dict() == load_config(default).to_dict()
