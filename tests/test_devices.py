"""Devices: resolving ``train.device`` / ``--device``, batches on the device, bf16 mixed precision
with float32 likelihoods, the device in client replies and archives, and (where a GPU exists)
bitstreams written on one device type and read on the other."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _client import client_train
from _data import SMOKE
from flwr.app import MetricRecord

from fedrs.config import TrainConfig, load_config
from fedrs.devices import (
    autocast,
    cross_device_note,
    pins_memory,
    resolve_device,
    to_device,
)
from fedrs.errors import InputError
from fedrs.models import JointModel, build_image_codec
from fedrs.pipeline import load_run_data
from fedrs.train import LocalTrainer, build_model, load_batch, mixed_precision, train_local

CUDA = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (none is visible here)")
without_gpu = pytest.mark.skipif(CUDA, reason="checks the refusal where no GPU is visible")
pytestmark = pytest.mark.usefixtures("cache_env")


# ---------------------------------------------------------------------------- resolution


def test_auto_is_a_visible_gpu_else_the_cpu() -> None:
    expected = torch.device("cuda", torch.cuda.current_device()) if CUDA else torch.device("cpu")
    assert resolve_device("auto") == expected
    assert resolve_device(" AUTO ") == expected
    # a simulated client given no GPU share stays on the CPU whatever the machine holds
    assert resolve_device("auto", cuda_allowed=False) == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@without_gpu
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "CUDA:0"])
def test_a_gpu_that_is_not_seen_is_refused(spec: str) -> None:
    with pytest.raises(InputError) as caught:
        resolve_device(spec)
    message = str(caught.value)
    assert message.startswith(f"train.device = {spec!r}: this process sees no CUDA GPU")
    assert "\n" not in message


def test_a_gpu_beyond_the_count_is_refused() -> None:
    with pytest.raises(InputError, match=r"--device = 'cuda:99': this process sees"):
        resolve_device("cuda:99", key="--device")


@pytest.mark.parametrize("spec", ["tpu", "gpu", "cuda:x", "", "mps", "meta"])
def test_what_is_not_a_cpu_or_cuda_device_is_refused(spec: str) -> None:
    with pytest.raises(InputError, match=r"train\.device = .*use 'auto', 'cpu', 'cuda'"):
        resolve_device(spec)


def test_the_config_defaults_to_auto_and_checks_the_spelling() -> None:
    config = load_config(SMOKE)
    assert config.train.device == "auto"
    assert config.train.amp == "off"
    assert TrainConfig().amp == "off"
    assert load_config(SMOKE, {"train.device": "CUDA:1"}).train.device == "cuda:1"
    for bad in ("tpu", "cuda:", "cpu:0:1"):
        with pytest.raises(InputError, match=r"train\.device"):
            load_config(SMOKE, {"train.device": bad})
    with pytest.raises(InputError, match=r"train\.amp"):
        load_config(SMOKE, {"train.amp": "fp8"})


@without_gpu
def test_an_experiment_asking_for_cuda_is_refused_before_anything_runs() -> None:
    from fedrs.validation import check_experiment

    with pytest.raises(InputError, match=r"train\.device = 'cuda': this process sees no CUDA"):
        check_experiment(load_config(SMOKE, {"train.device": "cuda"}))
    check_experiment(load_config(SMOKE))  # auto: the CPU here


@without_gpu
def test_gpu_shares_without_a_gpu_are_refused() -> None:
    from fedrs.server.simulation import check_resources

    with pytest.raises(InputError, match=r"--num-gpus 0\.1 asked for, but this machine has no GPU"):
        check_resources(1.0, 0.1, None)
    check_resources(1.0, 0.0, None)


# ---------------------------------------------------------------------------- batches


def test_memory_is_pinned_for_cuda_only() -> None:
    assert pins_memory(torch.device("cuda", 0))
    assert pins_memory(torch.device("cuda"))
    assert not pins_memory(torch.device("cpu"))
    host = torch.zeros(3)
    assert to_device(host, torch.device("cpu")) is host  # no copy, no pinning


def test_batches_follow_the_device_they_are_asked_for() -> None:
    config = load_config(SMOKE)
    data = load_run_data(config.data)
    rows = data.train_rows[:4]
    batch = load_batch(data.archive, rows, ("s1", "s2"), torch.device("cpu"))
    assert batch["s2"].device.type == "cpu" and not batch["s2"].is_pinned()
    assert batch["labels"].device.type == "cpu"
    if CUDA:
        on_gpu = load_batch(data.archive, rows, ("s1", "s2"), "cuda")
        assert on_gpu["s2"].device.type == "cuda" and on_gpu["has_s2"].device.type == "cuda"
        torch.testing.assert_close(on_gpu["s2"].cpu(), batch["s2"])


# ---------------------------------------------------------------------------- mixed precision


def test_amp_off_changes_nothing() -> None:
    with autocast(torch.device("cpu"), "off"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast(torch.device("cpu"), "bf16"):
        assert torch.is_autocast_enabled("cpu")
    assert not torch.is_autocast_enabled("cpu")


def test_bf16_runs_the_transforms_low_and_the_rate_in_float32() -> None:
    config = load_config(SMOKE, {"train.amp": "bf16"})
    data = load_run_data(config.data)
    model = build_model(config).train()
    batch = load_batch(data.archive, data.train_rows[:6], model.modalities)
    seen: dict[str, torch.dtype] = {}

    def note(module: torch.nn.Module, args: Any, output: torch.Tensor) -> None:
        seen["g_a"] = output.dtype

    handle = model.codec("s2").g_a.register_forward_hook(note)
    try:
        with mixed_precision(model, torch.device("cpu"), "bf16"):
            out = model(batch)
    finally:
        handle.remove()
    assert seen["g_a"] == torch.bfloat16  # the transforms ran in bfloat16
    for modality in model.modalities:
        for name in ("y", "z"):
            assert out["likelihoods"][modality][name].dtype == torch.float32, (modality, name)
    assert out["codes"].dtype == torch.float32  # the hash head in float32
    assert not torch.is_autocast_enabled("cpu")
    assert not model.hash_head._forward_pre_hooks and not model.hash_head._forward_hooks


@pytest.mark.parametrize("name", ["cheng2020-attn", "cheng2020-attn-ctx"])
def test_bf16_likelihoods_of_the_mixture_codecs_are_float32(name: str) -> None:
    torch.manual_seed(0)
    codec = build_image_codec(name, 2, width=8, latent=8).train()
    x = torch.randn(2, 2, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out: Any = codec(x)
    assert out["y"].dtype == torch.bfloat16
    assert out["likelihoods"]["y"].dtype == torch.float32
    assert out["likelihoods"]["z"].dtype == torch.float32
    assert bool(torch.isfinite(out["likelihoods"]["y"]).all())


def test_a_bf16_training_step_runs_on_the_cpu() -> None:
    config = load_config(SMOKE, {"train.amp": "bf16"})
    data = load_run_data(config.data)
    model = build_model(config)
    for stage in (1, 2):
        metrics = LocalTrainer(model, data.archive, data.train_rows, config, stage=stage).train(1)
        assert all(np.isfinite(v) for v in metrics.values()), metrics
        assert metrics["bpp"] > 0 and metrics["device-cuda"] == 0.0
    assert next(model.parameters()).dtype == torch.float32  # weights stay float32


def _trained_once(device: str, stage: int) -> tuple[JointModel, dict[str, float]]:
    """A fresh smoke model after one epoch of ``stage`` on ``device``, and the metrics."""
    config = load_config(SMOKE, {"train.device": device})
    data = load_run_data(config.data)
    model = build_model(config)
    return model, train_local(model, data.archive, data.train_rows, config, stage=stage, epochs=1)


def test_training_reports_its_device() -> None:
    _, metrics = _trained_once("cpu", stage=1)
    assert metrics["device-cuda"] == 0.0
    assert "cuda-max-memory-mb" not in metrics
    assert metrics["num-examples-s1"] == float(int(metrics["num-examples-s1"]))


@needs_gpu
def test_training_on_the_gpu_reports_its_memory() -> None:
    model, metrics = _trained_once("cuda", stage=2)
    assert metrics["device-cuda"] == 1.0
    assert metrics["cuda-max-memory-mb"] > 0
    assert next(model.parameters()).device.type == "cuda"


# ---------------------------------------------------------------------------- federation


def test_the_client_reports_its_device_per_round(task_identity: None) -> None:
    from fedrs.settings import RunSettings
    from fedrs.strategies.replies import client_metrics

    metrics = client_train(RunSettings(config_path=str(SMOKE)), 0)
    # no GPU share (federation.num_gpus = 0): the CPU, even where a GPU is seen
    assert metrics["device-cuda"] == 0
    found = client_metrics(metrics)
    assert found is not None and found[1]["device_cuda"] == 0.0
    gpu = client_metrics(MetricRecord({"client-id": 3, "device-cuda": 1.0}))
    assert gpu == (3, {"device_cuda": 1.0})


# ---------------------------------------------------------------------------- archives


def test_a_reader_on_another_device_type_is_warned() -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert cross_device_note("cpu", cpu, "decoding") is None
    assert cross_device_note("cuda", gpu, "decoding") is None
    assert cross_device_note(None, cpu, "decoding") is None  # archives from before the field
    note = cross_device_note("cuda", cpu, "decoding")
    assert note is not None and "\n" not in note
    assert note.startswith("the archive was written on cuda, decoding runs on cpu")
    assert "--device cuda" in note


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 12-patch synthetic archive and an (untrained) smoke model's run folder."""
    from fedrs.data.synth import write_synthetic_archive

    root = tmp_path_factory.mktemp("data") / "synthetic"
    write_synthetic_archive(root, patches=12, seed=5)
    config = load_config(SMOKE)
    run = tmp_path_factory.mktemp("runs") / "smoke"
    run.mkdir()
    torch.save(build_model(config).state_dict(), run / "model.pt")
    (run / "config.toml").write_text(config.to_toml(), encoding="utf-8")
    return root, run


def test_the_archive_records_its_device_and_readers_elsewhere_are_warned(
    small_run: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from fedrs.cli import main as cli
    from fedrs.container import CompressedArchive

    source, run = small_run
    out = tmp_path / "a.fedrs"
    args = ["compress", str(source), "--model", str(run), "--out", str(out), "--device", "cpu"]
    assert cli(args) == 0
    with CompressedArchive.open(out) as archive:
        assert archive.meta["device"] == "cpu"
    capsys.readouterr()
    back = ["decompress", str(out), "--model", str(run), "--device", "cpu"]
    assert cli([*back, "--out", str(tmp_path / "same")]) == 0
    assert "warning" not in capsys.readouterr().err

    written = CompressedArchive.meta.fget  # type: ignore[attr-defined]
    monkeypatch.setattr(
        CompressedArchive, "meta", property(lambda self: {**written(self), "device": "cuda"})
    )
    assert cli([*back, "--out", str(tmp_path / "other")]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("fedrs: warning: the archive was written on cuda, decoding runs on cpu")

    folder = next((source / "BigEarthNet-S2").glob("*/*"))
    search = ["search", "--archive", str(out), "--query-patch", str(folder)]
    assert cli([*search, "--model", str(run), "--device", "cpu", "--json"]) == 0
    err = capsys.readouterr().err
    assert "the archive was written on cuda, the query's hash code runs on cpu" in err


@without_gpu
def test_compress_with_cuda_and_no_gpu_is_one_line(
    small_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fedrs.cli import main as cli

    source, run = small_run
    out = tmp_path / "a.fedrs"
    args = ["compress", str(source), "--model", str(run), "--out", str(out), "--device", "cuda"]
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedrs: error: --device = 'cuda': this process sees no CUDA GPU")
    assert err.count("\n") == 1 and not out.exists()


@needs_gpu
@pytest.mark.parametrize("codec", ["hyperprior", "cheng2020-attn", "cheng2020-attn-ctx"])
def test_bitstreams_cross_between_gpu_and_cpu(codec: str) -> None:
    """Written on the GPU, read on the CPU, and the reverse: the latents decode as written
    (entropy parameters may differ in their last bits; the README says what is promised)."""
    config = load_config(SMOKE, {"model.codecs": {"s1": codec, "s2": codec}})
    data = load_run_data(config.data)
    cpu_model = build_model(config).eval()
    gpu_model = copy.deepcopy(cpu_model).to("cuda")
    batch = load_batch(data.archive, data.train_rows[:8], cpu_model.modalities)
    on_gpu = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    for writer, reader, inputs in (
        (gpu_model, cpu_model, on_gpu),
        (cpu_model, gpu_model, batch),
    ):
        streams = writer.compress(inputs)
        read = reader.decompress(streams)
        own = writer.decompress(streams)
        for modality in streams:
            torch.testing.assert_close(
                read["y_hat"][modality].cpu(), own["y_hat"][modality].cpu(), atol=1e-3, rtol=0
            )
            torch.testing.assert_close(
                read["x_hat"][modality].cpu(), own["x_hat"][modality].cpu(), atol=1e-2, rtol=0
            )
