"""The stage-2 head phase: the hash head trained alone on frozen quantised latents."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from _data import SMOKE

from fedrs import protocol
from fedrs.client_data import ClientData
from fedrs.client_round import train_round
from fedrs.config import load_config
from fedrs.errors import InputError
from fedrs.losses import HASH_TERMS, compute_losses, hash_losses
from fedrs.pipeline import load_run_data
from fedrs.train import build_model, load_batch, train_hash_head

pytestmark = pytest.mark.usefixtures("cache_env")


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_hash_losses_are_the_hash_terms_of_compute_losses() -> None:
    config = load_config(SMOKE)
    data = load_run_data(config.data)
    model = build_model(config).train()
    batch = load_batch(data.archive, data.train_rows[:6], ("s1", "s2"), "cpu")
    torch.manual_seed(0)
    out = model(batch)
    terms = compute_losses(out, batch, batch["labels"], config.loss, 2)
    alone = hash_losses(out, batch["labels"], config.loss, out["masks"])
    assert set(alone) == set(HASH_TERMS)
    for name in HASH_TERMS:
        torch.testing.assert_close(alone[name], terms[name])
    assert float(alone["mim"].detach()) > 0  # both modalities present: the InfoNCE term is live


def test_head_phase_trains_the_head_alone_and_lowers_its_loss() -> None:
    config = load_config(SMOKE)
    data = load_run_data(config.data)
    model = build_model(config)
    rows = data.train_rows[:32]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    short, long = copy.deepcopy(model), copy.deepcopy(model)
    first = train_hash_head(short, data.archive, rows, config, epochs=1, batch_size=8, seed=3)
    later = train_hash_head(long, data.archive, rows, config, epochs=12, batch_size=8, seed=3)
    assert first["head_batches"] == 4 and later["head_batches"] == 48
    assert later["head_loss"] < first["head_loss"]
    changed = _changed(before, long.state_dict())
    assert changed and all(k.startswith("hash_head.") for k in changed)
    assert any(k.startswith("hash_head.encoders.") for k in changed)
    assert not long.training


def test_head_phase_is_reproducible_and_skips_a_lone_trailing_item() -> None:
    config = load_config(SMOKE)
    data = load_run_data(config.data)
    model = build_model(config)
    rows = data.train_rows[:17]  # 16 + a trailing batch of 1 (no pair): skipped
    states = []
    for _ in range(2):
        trained = copy.deepcopy(model)
        metrics = train_hash_head(trained, data.archive, rows, config, epochs=2, batch_size=16)
        assert metrics["head_batches"] == 2
        states.append(trained.state_dict())
    assert not _changed(states[0], states[1])


def test_head_phase_refuses_bad_settings() -> None:
    config = load_config(SMOKE)
    data = load_run_data(config.data)
    model = build_model(config)
    rows = data.train_rows[:8]
    with pytest.raises(InputError, match="epochs"):
        train_hash_head(model, data.archive, rows, config, epochs=0, batch_size=8)
    with pytest.raises(InputError, match="batch_size"):
        train_hash_head(model, data.archive, rows, config, epochs=1, batch_size=1)
    with pytest.raises(InputError, match="two patches"):
        train_hash_head(model, data.archive, rows[:1], config, epochs=1, batch_size=8)
    with pytest.raises(InputError, match="head_batch_size"):
        load_config(SMOKE, {"federation.head_batch_size": 1})
    with pytest.raises(InputError, match="head_epochs"):
        load_config(SMOKE, {"federation.head_epochs": -1})


@pytest.mark.parametrize("stage", [1, 2])
def test_client_round_runs_the_head_phase_in_stage_2_only(stage: int) -> None:
    config = load_config(SMOKE, {"federation.head_epochs": 2, "federation.head_batch_size": 16})
    data = load_run_data(config.data)
    model = build_model(config)
    received = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    client = ClientData(0, data.archive, data.train_rows[:24], ("s1", "s2"))
    server_round = config.federation.stage1_rounds + (stage - 1)
    trained = train_round(config, client, received, {protocol.SERVER_ROUND: server_round})
    assert ("head_loss" in trained.metrics) == (stage == 2)
    if stage == 2:
        assert trained.metrics["head_batches"] == 4  # 24 patches: 16 + 8, twice
    head_moved = not np.array_equal(
        trained.arrays["hash_head.hash_mlp.2.weight"], received["hash_head.hash_mlp.2.weight"]
    )
    assert head_moved == (stage == 2)
