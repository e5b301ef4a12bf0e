"""The fedrs cache, format 2: native pixels (S2 uint16 per resolution group, S1 float32),
upsampled per batch; built by processes, resumable; format 1 refused (or rebuilt when fedrs
made it itself)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import fedrs.data.cache as cache_module
from fedrs.cli import main as cli
from fedrs.config import DataConfig
from fedrs.data import CorruptPatchError, V1Archive, collate_patches, open_archive, prepare_cache
from fedrs.data.archive import PatchArchive
from fedrs.data.cache import ARRAYS, MARKER, PROGRESS, CachedArchive, partial_folder
from fedrs.data.geotiff import S2_GROUP_INDEX, S2_GROUPS
from fedrs.data.transforms import normalize, upsample_s2
from fedrs.errors import InputError
from fedrs.pipeline import resolve_cache
from fedrs.train import load_batch


def _source(layout: str, v1_sample: Path, v2_copy: Path, **options: Any) -> PatchArchive:
    return open_archive(v1_sample if layout == "v1" else v2_copy, **options)


def _files(folder: Path) -> dict[str, Any]:
    """The content of a cache folder, comparable with ``==``."""
    out: dict[str, Any] = {"marker": json.loads((folder / MARKER).read_text())}
    for stem in ARRAYS:
        out[stem] = np.load(folder / f"{stem}.npy").tobytes()
    out["index"] = pd.read_parquet(folder / "index.parquet").to_json()
    return out


@pytest.mark.parametrize("resample", ["nearest", "bilinear"])
@pytest.mark.parametrize("layout", ["v1", "v2"])
def test_round_trip_equals_the_geotiff_reader(
    tmp_path: Path, v1_sample: Path, v2_copy: Path, layout: str, resample: str
) -> None:
    source = _source(layout, v1_sample, v2_copy, resample=resample)
    cached = open_archive(prepare_cache(source, tmp_path / "cache", workers=1))
    assert isinstance(cached, CachedArchive) and cached.resample == resample
    rows = np.arange(len(source))
    for i in rows:
        a, b = source[int(i)], cached[int(i)]
        for modality in ("s1", "s2"):
            assert (a[modality] is None) == (b[modality] is None)
            if a[modality] is not None:
                assert torch.equal(a[modality], b[modality])  # bit for bit, both modes
    reference = collate_patches([source[int(i)] for i in rows])
    batch = cached.get_batch(rows)
    native = cached.get_batch(rows, native=True)
    for key in ("s1", "s2", "labels", "has_s1", "has_s2"):
        assert torch.equal(batch[key], reference[key])
    has = native["has_s2"].numpy()
    for k in np.flatnonzero(has):
        groups = source.read_s2_native(int(k))
        for res in S2_GROUPS:
            assert native["s2"][res].dtype == torch.uint16
            np.testing.assert_array_equal(native["s2"][res][k].numpy(), groups[res])
    for k in np.flatnonzero(~has):
        assert not any(native["s2"][res][k].numpy().any() for res in S2_GROUPS)
    assert torch.equal(upsample_s2(native["s2"], resample), reference["s2"])
    assert torch.equal(native["s1"], reference["s1"])


def test_bilinear_is_interpolate_without_aligned_corners(tmp_path: Path, v1_sample: Path) -> None:
    """The readers' bilinear convention is ``F.interpolate(..., align_corners=False)``'s."""
    source = open_archive(v1_sample, modalities=("s2",))
    cached = open_archive(prepare_cache(source, tmp_path / "cache", workers=1))
    assert isinstance(cached, CachedArchive)
    native = cached.get_batch(np.arange(len(cached)), native=True)["s2"]
    upsampled = upsample_s2(native, "bilinear")
    for res, index in S2_GROUP_INDEX.items():
        if res == 10:
            continue
        expected = F.interpolate(
            native[res].float(), size=(120, 120), mode="bilinear", align_corners=False
        )
        torch.testing.assert_close(upsampled[:, list(index)], expected, rtol=1e-4, atol=1e-3)


def test_bytes_per_pair_are_the_native_pixels(tmp_path: Path, v1_sample: Path) -> None:
    source = open_archive(v1_sample)
    out = prepare_cache(source, tmp_path / "cache", workers=1)
    native = 0
    for row in range(len(source)):
        if source.metadata.at[row, "has_s2"]:
            native += sum(g.nbytes for g in source.read_s2_native(row).values())
        if source.metadata.at[row, "has_s1"]:
            native += source.read_s1(row).nbytes
    stored = sum(p.stat().st_size for p in out.iterdir())
    assert stored <= 1.05 * native
    for stem, (_, dtype, _) in ARRAYS.items():
        assert np.load(out / f"{stem}.npy", mmap_mode="r").dtype == dtype


@pytest.mark.parametrize(
    ("value", "why"),
    [(0.5, "not an integer"), (-1.0, "not an integer"), (70000, "not an integer")],
)
def test_s2_must_be_uint16_integers(
    tmp_path: Path, v1_sample: Path, monkeypatch: pytest.MonkeyPatch, value: float, why: str
) -> None:
    source = open_archive(v1_sample, modalities=("s2",))
    read = source.read_s2_native

    def damaged(row: int) -> dict[int, np.ndarray]:
        groups = {res: g.astype(np.float64) for res, g in read(row).items()}
        if row == 3:
            groups[20][1, 5, 7] = value
        return groups

    monkeypatch.setattr(source, "read_s2_native", damaged)
    with pytest.raises(CorruptPatchError, match=why) as info:
        prepare_cache(source, tmp_path / "cache", workers=1)
    assert str(source.metadata.at[3, "patch_id"]) in str(info.value)
    assert "S2 20 m bands" in str(info.value)
    assert not (tmp_path / "cache").exists()


def test_integer_valued_floats_are_stored_exactly(
    tmp_path: Path, v1_sample: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = open_archive(v1_sample, modalities=("s2",), resample="nearest")
    read = source.read_s2_native
    monkeypatch.setattr(
        source,
        "read_s2_native",
        lambda row: {r: g.astype(np.float32) for r, g in read(row).items()},
    )
    cached = open_archive(prepare_cache(source, tmp_path / "cache", workers=1))
    np.testing.assert_array_equal(cached.read_s2_native(2)[60], read(2)[60])


class _Reads:
    """Counts the rows a V1 archive reads; raises KeyboardInterrupt at read number ``stop``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.rows: set[int] = set()
        self.stop: int | None = None
        s2, s1 = V1Archive.read_s2_native, V1Archive.read_s1

        def read_s2(archive: V1Archive, row: int) -> dict[int, np.ndarray]:
            self._note(row)
            return s2(archive, row)

        def read_s1(archive: V1Archive, row: int) -> np.ndarray:
            self._note(row)
            return s1(archive, row)

        monkeypatch.setattr(V1Archive, "read_s2_native", read_s2)
        monkeypatch.setattr(V1Archive, "read_s1", read_s1)

    def _note(self, row: int) -> None:
        self.rows.add(row)
        if self.stop is not None and len(self.rows) >= self.stop:
            raise KeyboardInterrupt


def test_an_interrupted_build_continues_where_it_stopped(
    tmp_path: Path, v1_sample: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cache_module, "CHUNK_ROWS", 4)
    source = open_archive(v1_sample)
    whole = prepare_cache(source, tmp_path / "whole", workers=1)
    reads = _Reads(monkeypatch)
    reads.stop = 10  # in the third chunk: two chunks (8 rows) are complete
    out = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        prepare_cache(source, out, workers=1)
    assert not out.exists()
    partial = partial_folder(out)
    assert partial.name == ".cache.partial"
    assert json.loads((partial / PROGRESS).read_text())["done"] == [0, 1]
    reads.rows.clear()
    reads.stop = None
    resumed: list[int] = []
    progress: list[int] = []
    prepare_cache(source, out, workers=1, on_resume=resumed.append, on_progress=progress.append)
    assert resumed == [8]
    assert sum(progress) == len(source)
    assert reads.rows == set(range(8, len(source)))  # only the rows not cached before
    assert not partial.exists()
    assert _files(out) == _files(whole)
    assert torch.equal(open_archive(out)[12]["s2"], source[12]["s2"])


def test_a_partial_build_of_other_options_is_started_over(
    tmp_path: Path, v1_sample: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cache_module, "CHUNK_ROWS", 4)
    reads = _Reads(monkeypatch)
    reads.stop = 10
    out = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        prepare_cache(open_archive(v1_sample, resample="nearest"), out, workers=1)
    assert partial_folder(out).is_dir()
    reads.rows.clear()
    reads.stop = None
    source = open_archive(v1_sample, resample="bilinear")
    resumed: list[int] = []
    prepare_cache(source, out, workers=1, on_resume=resumed.append)
    assert resumed == [] and reads.rows == set(range(len(source)))
    cached = open_archive(out)
    assert cached.resample == "bilinear"
    assert _files(out) == _files(prepare_cache(source, tmp_path / "whole", workers=1))


def test_an_early_failure_leaves_no_partial_folder(tmp_path: Path, v1_sample: Path) -> None:
    out = tmp_path / "cache"
    partial_folder(out).write_text("in the way")
    with pytest.raises(InputError, match="is not a folder"):
        prepare_cache(open_archive(v1_sample), out, workers=1)
    partial_folder(out).unlink()

    def interrupt(n: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # in the first chunk: nothing worth continuing
        prepare_cache(open_archive(v1_sample), out, workers=1, on_progress=interrupt)
    assert list(tmp_path.iterdir()) == []


def test_workers_through_the_cli_continue_a_failed_build(
    tmp_path: Path, v1_copy: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Worker processes (each opens the archive itself): a bad patch stops the build, the
    chunks done are kept, and the same command continues once the file is mended."""
    monkeypatch.setattr(cache_module, "CHUNK_ROWS", 3)  # the parent cuts the chunks
    source = open_archive(v1_copy)
    last = len(source) - 1
    assert source.metadata.at[last, "has_s2"]
    pid = str(source.metadata.at[last, "patch_id"])
    band = v1_copy / "BigEarthNet-v1.0" / pid / f"{pid}_B11.tif"
    good = band.read_bytes()
    band.write_bytes(b"not a tiff")
    out = tmp_path / "cache"
    args = ["prepare", str(v1_copy), "--out", str(out), "--workers", "2"]
    assert cli(args) == 2
    assert f"{band}: unreadable GeoTIFF" in capsys.readouterr().err
    chunks = -(-len(source) // 3)
    done = json.loads((partial_folder(out) / PROGRESS).read_text())["done"]
    assert 1 <= len(done) and chunks - 1 not in done  # the chunks that were finished
    band.write_bytes(good)
    assert cli(args) == 0
    assert "continuing the interrupted preparation" in capsys.readouterr().out
    assert not partial_folder(out).exists()
    assert _files(out) == _files(prepare_cache(source, tmp_path / "whole", workers=1))


def test_spawned_workers_build_the_same_cache(
    tmp_path: Path, v1_sample: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where processes are spawned (not Linux), each imports fedrs and opens the archive."""
    monkeypatch.setattr(cache_module, "CHUNK_ROWS", 6)
    monkeypatch.setattr(cache_module, "START_METHOD", "spawn")
    source = open_archive(v1_sample, resample="nearest")
    out = prepare_cache(source, tmp_path / "cache", workers=2)
    assert _files(out) == _files(prepare_cache(source, tmp_path / "whole", workers=1))


def _as_format_1(out: Path) -> None:
    marker = json.loads((out / MARKER).read_text())
    marker["version"] = 1
    (out / MARKER).write_text(json.dumps(marker))


def test_format_1_is_refused_with_the_command_that_rebuilds_it(
    tmp_path: Path, v1_sample: Path, capsys: pytest.CaptureFixture
) -> None:
    out = prepare_cache(
        open_archive(v1_sample, modalities=("s2",), resample="nearest"), tmp_path / "c", workers=1
    )
    _as_format_1(out)
    command = (
        f"fedrs prepare {v1_sample.resolve()} --out {out} --modalities s2 --resample nearest "
        "--overwrite"
    )
    with pytest.raises(InputError) as info:
        open_archive(out)
    message = str(info.value)
    assert message == (
        f"{out}: fedrs cache format 1 (float32, upsampled); rebuild it with `{command}`"
    )
    assert cli(["prepare", str(out), "--out", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"fedrs: error: {message}"]
    assert cli(command.split()[1:]) == 0  # the command given rebuilds it
    assert json.loads((out / MARKER).read_text())["version"] == cache_module.VERSION
    assert len(open_archive(out)) == len(open_archive(v1_sample, modalities=("s2",)))


def test_the_synthetic_cache_of_an_old_format_is_rebuilt(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FEDRS_CACHE_DIR", str(tmp_path))
    config = DataConfig.model_validate({"patches": 20})
    cache = resolve_cache(config)
    _as_format_1(cache)
    with pytest.raises(InputError, match="format 1"):
        open_archive(cache)
    assert resolve_cache(config) == cache
    assert len(open_archive(cache)) == 20
    assert json.loads((cache / MARKER).read_text())["version"] == cache_module.VERSION


@pytest.mark.parametrize("resample", ["nearest", "bilinear"])
def test_load_batch_equals_normalised_items(tmp_path: Path, v1_sample: Path, resample: str) -> None:
    source = open_archive(v1_sample, resample=resample)
    cached = open_archive(prepare_cache(source, tmp_path / "cache", workers=1))
    assert isinstance(cached, CachedArchive)
    rows = np.arange(len(cached))[::-1].copy()
    batch = load_batch(cached, rows, ("s1", "s2"))
    old = cached.get_batch(rows)  # the upsampled batch, normalised on the host before
    for modality in ("s1", "s2"):
        assert torch.equal(batch[modality], normalize(old[modality], modality))
        for k, row in enumerate(rows):
            item = source[int(row)][modality]
            if item is not None:
                assert torch.equal(batch[modality][k], normalize(item, modality))
    only_s1 = load_batch(cached, rows, ("s1",))
    assert "s2" not in only_s1 and torch.equal(only_s1["s1"], batch["s1"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_load_batch_on_a_gpu_equals_the_cpu(tmp_path: Path, v1_sample: Path) -> None:
    for resample in ("nearest", "bilinear"):
        source = open_archive(v1_sample, resample=resample)
        cached = open_archive(prepare_cache(source, tmp_path / resample, workers=1))
        assert isinstance(cached, CachedArchive)
        rows = np.arange(len(cached))
        on_cpu = load_batch(cached, rows, ("s1", "s2"))
        on_gpu = load_batch(cached, rows, ("s1", "s2"), "cuda")
        for modality in ("s1", "s2"):
            assert on_gpu[modality].device.type == "cuda"
            assert torch.equal(on_gpu[modality].cpu(), on_cpu[modality])
