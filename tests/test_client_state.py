"""What a client keeps in its node state between rounds (``federation.keep_optimizer``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from _client import client_train
from _data import SMOKE
from flwr.app import RecordDict


def _round(settings: Any, state: RecordDict, server_round: int) -> dict[str, Any]:
    return dict(client_train(settings, 2, server_round=server_round, state=state))


@pytest.mark.parametrize("keep", [True, False])
@pytest.mark.usefixtures("task_identity")
def test_client_keeps_adam_between_rounds_of_a_stage(keep: bool) -> None:
    from fedrs.clients.app import OPTIMIZER_META_KEY, OPTIMIZER_STATE_KEY
    from fedrs.settings import RunSettings

    settings = RunSettings(
        config_path=str(SMOKE),
        overrides={
            "federation.keep_optimizer": keep,
            "federation.rounds": 3,
            "federation.stage1_rounds": 2,
        },
    )
    state = RecordDict()
    first = _round(settings, state, 1)
    if not keep:
        assert OPTIMIZER_STATE_KEY not in state.array_records
        return
    steps = [a.numpy() for k, a in state.array_records[OPTIMIZER_STATE_KEY].items() if "/step" in k]
    assert steps and {float(s[0]) for s in steps} == {first["batches"]}
    second = _round(settings, state, 2)  # stage 1 again: Adam continues
    steps = [a.numpy() for k, a in state.array_records[OPTIMIZER_STATE_KEY].items() if "/step" in k]
    assert {float(s[0]) for s in steps} == {first["batches"] + second["batches"]}
    third = _round(settings, state, 3)  # stage 2: a fresh Adam over other parameters
    steps = [a.numpy() for k, a in state.array_records[OPTIMIZER_STATE_KEY].items() if "/step" in k]
    assert {float(s[0]) for s in steps} == {third["batches"]}
    assert state.config_records[OPTIMIZER_META_KEY]["stage"] == 2
    assert any("hash_head" in k for k in state.array_records[OPTIMIZER_STATE_KEY])
    assert np.isfinite(third["loss"])


@pytest.mark.usefixtures("task_identity")
def test_local_batch_size_sets_the_clients_steps() -> None:
    from fedrs.settings import RunSettings

    steps = {}
    for size in (None, 3):
        overrides = {"federation.local_batch_size": size, "train.max_batches": None}
        settings = RunSettings(config_path=str(SMOKE), overrides=overrides)
        metrics = _round(settings, RecordDict(), 1)
        steps[size] = metrics["batches"]
        examples = metrics["num-examples"]
    default = RunSettings(config_path=str(SMOKE)).experiment().train.batch_size
    assert default != 3 and steps[None] == -(-examples // default)
    assert steps[3] == -(-examples // 3)
