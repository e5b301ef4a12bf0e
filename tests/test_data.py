"""The archive readers against raw rasterio reads of the real BigEarthNet samples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import torch

from fedrs.cli import main as cli
from fedrs.data import (
    LABELS_19,
    ArchiveNotFoundError,
    CorruptPatchError,
    collate_patches,
    denormalize,
    normalize,
    open_archive,
    prepare_cache,
)
from fedrs.data.facts import LABEL_43_TO_19, S2_BANDS, S2_RESOLUTION_M
from fedrs.data.metadata import load_metadata, write_metadata
from fedrs.errors import InputError

PAIRS = ("87_48", "36_85", "4_55", "56_35", "69_24", "57_38")


def raw(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def labels_of(item: dict) -> set[str]:
    return {LABELS_19[i] for i in np.flatnonzero(item["labels"].numpy())}


# -- v1 -------------------------------------------------------------------------------------


def test_v1_counts_and_pairs(v1_sample: Path) -> None:
    archive = open_archive(v1_sample)
    meta = archive.metadata
    assert archive.layout == "v1"
    assert int(meta["has_s2"].sum()) == 14
    assert int(meta["has_s1"].sum()) == 9
    paired = meta[meta["has_s1"] & meta["has_s2"]]
    assert len(paired) == 6
    for _, row in paired.iterrows():
        tile = "_".join(row["patch_id"].split("_")[-2:])
        assert tile in PAIRS
        assert row["s1_name"].endswith(tile)
    assert len(archive) == 14 + 9 - 6
    assert set(meta["season"]) <= {"Winter", "Spring", "Summer", "Fall"}


def test_v1_values_equal_raw_reads(v1_sample: Path) -> None:
    archive = open_archive(v1_sample, resample="nearest")
    checked_s2 = checked_s1 = 0
    for i in range(len(archive)):
        item = archive[i]
        row = archive.metadata.iloc[i]
        if item["s2"] is not None:
            pid = item["patch_id"]
            for b, band in enumerate(S2_BANDS):
                native = raw(v1_sample / "BigEarthNet-v1.0" / pid / f"{pid}_{band}.tif")
                factor = 120 // native.shape[0]
                expected = np.repeat(np.repeat(native, factor, 0), factor, 1).astype(np.float32)
                np.testing.assert_array_equal(item["s2"][b].numpy(), expected)
            checked_s2 += 1
        if item["s1"] is not None:
            name = row["s1_name"]
            for b, band in enumerate(("VV", "VH")):
                expected = raw(v1_sample / "BigEarthNet-S1-v1.0" / name / f"{name}_{band}.tif")
                np.testing.assert_array_equal(item["s1"][b].numpy(), expected)
            checked_s1 += 1
    assert (checked_s2, checked_s1) == (14, 9)


def test_bilinear_keeps_10m_bands_exact_and_smooths_others(v1_sample: Path) -> None:
    bilinear = open_archive(v1_sample, modalities=("s2",))
    nearest = open_archive(v1_sample, modalities=("s2",), resample="nearest")
    a, b = bilinear[0]["s2"], nearest[0]["s2"]
    for i, band in enumerate(S2_BANDS):
        if S2_RESOLUTION_M[band] == 10:
            assert torch.equal(a[i], b[i])
        else:
            assert not torch.equal(a[i], b[i])
            # Upsampling preserves the band's value range and mean closely.
            assert abs(float(a[i].mean() - b[i].mean())) < 0.02 * float(b[i].abs().mean()) + 1


def test_v1_labels_follow_json_through_43_to_19(v1_sample: Path) -> None:
    archive = open_archive(v1_sample)
    for i in range(len(archive)):
        item = archive[i]
        pid = item["patch_id"]
        folder = "BigEarthNet-v1.0" if item["s2"] is not None else "BigEarthNet-S1-v1.0"
        info = json.loads((v1_sample / folder / pid / f"{pid}_labels_metadata.json").read_text())
        expected = {LABEL_43_TO_19[n] for n in info["labels"]} - {None}
        assert labels_of(item) == expected


def test_modalities_and_split_filters(v1_sample: Path, v2_copy: Path) -> None:
    s1_only = open_archive(v1_sample, modalities=("s1",))
    assert len(s1_only) == 9
    assert all(s1_only[i]["s2"] is None for i in range(len(s1_only)))
    train = open_archive(v2_copy, split="train")
    assert len(train) > 0
    assert set(train.metadata["split"]) == {"train"}
    with pytest.raises(InputError, match="modalities"):
        open_archive(v1_sample, modalities=("s3",))
    with pytest.raises(InputError, match="resample"):
        open_archive(v1_sample, resample="cubic")


# -- v2 -------------------------------------------------------------------------------------


def test_v2_with_separate_metadata(v2_sample: Path, v2_metadata: Path) -> None:
    archive = open_archive(v2_sample, metadata=v2_metadata)
    meta = archive.metadata
    assert archive.layout == "v2"
    assert int(meta["has_s2"].sum()) == 2
    assert int(meta["has_s1"].sum()) == 3
    official = pd.read_parquet(v2_metadata)
    for i in range(len(archive)):
        item = archive[i]
        row = meta.iloc[i]
        if item["s2"] is not None:
            ref = official[official["patch_id"] == item["patch_id"]].iloc[0]
            pid = item["patch_id"]
            product = pid.rsplit("_", 2)[0]
            folder = v2_sample / "BigEarthNet-S2" / product / pid
            np.testing.assert_array_equal(
                item["s2"][1].numpy(), raw(folder / f"{pid}_B02.tif").astype(np.float32)
            )
        else:  # S1-only: patch_id is the S1 name
            assert item["patch_id"] == row["s1_name"]
            ref = official[official["s1_name"] == row["s1_name"]].iloc[0]
            name = row["s1_name"]
            folder = v2_sample / "BigEarthNet-S1" / name.rsplit("_", 3)[0] / name
            np.testing.assert_array_equal(item["s1"][0].numpy(), raw(folder / f"{name}_VV.tif"))
        assert labels_of(item) == set(ref["labels"])
        assert row["country"] == ref["country"]


def test_v2_without_metadata_is_refused(v2_sample: Path) -> None:
    with pytest.raises(ArchiveNotFoundError, match="metadata"):
        open_archive(v2_sample)


def test_unknown_layout(tmp_path: Path) -> None:
    with pytest.raises(ArchiveNotFoundError, match="no BigEarthNet layout"):
        open_archive(tmp_path)
    with pytest.raises(ArchiveNotFoundError, match="not found"):
        open_archive(tmp_path / "missing")


# -- bad input ------------------------------------------------------------------------------


def _first_s2(root: Path) -> Path:
    return sorted((root / "BigEarthNet-v1.0").iterdir())[0]


def test_missing_band_file(v1_copy: Path) -> None:
    folder = _first_s2(v1_copy)
    victim = folder / f"{folder.name}_B05.tif"
    victim.unlink()
    archive = open_archive(v1_copy)
    row = int(np.flatnonzero(archive.metadata["patch_id"] == folder.name)[0])
    with pytest.raises(CorruptPatchError, match=r"B05\.tif: file not found") as info:
        archive[row]
    assert info.value.path == victim


def test_truncated_geotiff(v1_copy: Path) -> None:
    folder = _first_s2(v1_copy)
    victim = folder / f"{folder.name}_B02.tif"
    victim.write_bytes(victim.read_bytes()[:300])
    archive = open_archive(v1_copy)
    row = int(np.flatnonzero(archive.metadata["patch_id"] == folder.name)[0])
    with pytest.raises(CorruptPatchError, match=r"B02\.tif") as info:
        archive[row]
    assert info.value.path == victim


def _rewrite(path: Path, data: np.ndarray) -> None:
    with rasterio.open(path) as src:
        profile = src.profile
    profile.update(height=data.shape[0], width=data.shape[1], dtype=str(data.dtype))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)


@pytest.mark.parametrize(
    ("band", "data", "message"),
    [
        ("B02", np.zeros((60, 60), np.uint16), "expected 120x120 pixels, found 60x60"),
        ("B02", np.zeros((120, 120), np.float32), "expected dtype uint16, found float32"),
    ],
)
def test_wrong_shape_or_dtype(v1_copy: Path, band: str, data: np.ndarray, message: str) -> None:
    folder = _first_s2(v1_copy)
    _rewrite(folder / f"{folder.name}_{band}.tif", data)
    archive = open_archive(v1_copy)
    row = int(np.flatnonzero(archive.metadata["patch_id"] == folder.name)[0])
    with pytest.raises(CorruptPatchError, match=message):
        archive[row]


def test_malformed_json(v1_copy: Path) -> None:
    folder = _first_s2(v1_copy)
    victim = folder / f"{folder.name}_labels_metadata.json"
    victim.write_text('{"labels": ["Pastures", ')
    with pytest.raises(CorruptPatchError, match="malformed JSON") as info:
        open_archive(v1_copy)
    assert info.value.path == victim
    victim.write_text('{"labels": ["Not a class"]}')
    with pytest.raises(CorruptPatchError, match="unknown 43-class"):
        open_archive(v1_copy)


def test_malformed_parquet(v2_copy: Path) -> None:
    meta = v2_copy / "metadata.parquet"
    meta.write_bytes(meta.read_bytes()[:100])
    with pytest.raises(CorruptPatchError, match="unreadable parquet") as info:
        open_archive(v2_copy)
    assert info.value.path == meta


def test_skip_bad_patches_reports_them(v1_copy: Path) -> None:
    folder = _first_s2(v1_copy)
    (folder / f"{folder.name}_B11.tif").write_bytes(b"not a tiff")
    with pytest.warns(UserWarning, match="skipped 1 bad patch"):
        archive = open_archive(v1_copy, on_error="skip")
    assert len(archive) == 16
    assert [pid for pid, _ in archive.skipped] == [folder.name]
    assert "B11.tif" in archive.skipped[0][1]
    assert folder.name not in set(archive.metadata["patch_id"])
    assert all(archive[i]["labels"].shape == (19,) for i in range(len(archive)))


# -- cache ----------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["v1", "v2"])
def test_cache_items_equal_geotiff_items(
    tmp_path: Path, v1_sample: Path, v2_copy: Path, layout: str
) -> None:
    source = open_archive(v1_sample if layout == "v1" else v2_copy)
    prepare_cache(source, tmp_path / "cache")
    cached = open_archive(tmp_path / "cache")
    assert cached.layout == "cache"
    assert len(cached) == len(source)
    pd.testing.assert_frame_equal(
        cached.metadata.drop(columns=["s1_row", "s2_row", "labels"]),
        source.metadata.drop(columns=["labels"]),
    )
    for i in range(len(source)):
        a, b = source[i], cached[i]
        assert a["patch_id"] == b["patch_id"]
        assert torch.equal(a["labels"], b["labels"])
        for modality in ("s1", "s2"):
            assert (a[modality] is None) == (b[modality] is None)
            if a[modality] is not None:
                assert torch.equal(a[modality], b[modality])
    rows = np.arange(len(cached))
    batch = cached.get_batch(rows)
    reference = collate_patches([cached[i] for i in rows])
    for key in ("s1", "s2", "labels", "has_s1", "has_s2"):
        assert torch.equal(batch[key], reference[key])


def test_cache_keeps_its_resampling(tmp_path: Path, v1_sample: Path) -> None:
    source = open_archive(v1_sample, modalities=("s2",), resample="nearest")
    prepare_cache(source, tmp_path / "cache")
    cached = open_archive(tmp_path / "cache")
    assert cached.resample == "nearest"
    assert torch.equal(cached[0]["s2"], source[0]["s2"])
    with pytest.raises(InputError, match="nearest-upsampled"):
        open_archive(tmp_path / "cache", resample="bilinear")


def test_cache_refuses_to_overwrite(tmp_path: Path, v1_sample: Path) -> None:
    source = open_archive(v1_sample, modalities=("s1",))
    out = prepare_cache(source, tmp_path / "cache")
    marker = (out / "fedrs-cache.json").read_text()
    with pytest.raises(InputError, match="exists already"):
        prepare_cache(source, out)
    assert (out / "fedrs-cache.json").read_text() == marker
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not a fedrs cache"):
        prepare_cache(source, other)
    assert (other / "notes.txt").read_text() == "keep me"
    prepare_cache(source, out, overwrite=True)
    assert len(open_archive(out)) == 9


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_prepare_overwrite_onto_itself_keeps_the_cache(
    tmp_path: Path, v1_sample: Path, capsys: pytest.CaptureFixture
) -> None:
    """``fedrs prepare CACHE --out CACHE --overwrite`` is refused before anything is removed."""
    cache = tmp_path / "cache"
    assert cli(["prepare", str(v1_sample), "--out", str(cache), "--modalities", "s1"]) == 0
    before = _snapshot(cache)
    capsys.readouterr()
    assert cli(["prepare", str(cache), "--out", str(cache), "--overwrite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot be written into the archive itself" in err[0]
    assert _snapshot(cache) == before
    assert len(open_archive(cache)) == 9  # the patches with S1
    # a folder that merely looks like a cache (an index.parquet, no marker) is never replaced
    lookalike = tmp_path / "lookalike"
    lookalike.mkdir()
    (lookalike / "index.parquet").write_bytes(b"someone else's table")
    assert cli(["prepare", str(v1_sample), "--out", str(lookalike), "--overwrite"]) == 2
    assert "is not a fedrs cache" in capsys.readouterr().err
    assert _snapshot(lookalike) == {"index.parquet": b"someone else's table"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "lookalike"]


def test_interrupted_overwrite_leaves_the_old_cache_intact(tmp_path: Path, v1_sample: Path) -> None:
    """The new cache is built beside the old one and swapped in only when complete."""
    out = prepare_cache(open_archive(v1_sample, modalities=("s1",)), tmp_path / "cache")
    before = _snapshot(out)
    source = open_archive(v1_sample)
    copied = [0]

    def interrupt_midway(n: int) -> None:
        copied[0] += n
        if copied[0] == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare_cache(source, out, overwrite=True, workers=1, on_progress=interrupt_midway)
    assert copied[0] == 5
    assert _snapshot(out) == before
    assert list(tmp_path.iterdir()) == [out]  # no partial folder left beside it
    assert len(open_archive(out)) == 9  # the patches with S1
    prepare_cache(source, out, overwrite=True)
    assert len(open_archive(out)) == 17
    assert list(tmp_path.iterdir()) == [out]


def test_cache_version_is_checked(tmp_path: Path, v1_sample: Path) -> None:
    out = prepare_cache(open_archive(v1_sample, modalities=("s1",)), tmp_path / "cache")
    marker = json.loads((out / "fedrs-cache.json").read_text())
    marker["version"] = 99
    (out / "fedrs-cache.json").write_text(json.dumps(marker))
    with pytest.raises(CorruptPatchError, match="version 99"):
        open_archive(out)


def test_prepare_cli(tmp_path: Path, v1_sample: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli(["prepare", str(v1_sample), "--out", str(tmp_path / "c")]) == 0
    assert len(open_archive(tmp_path / "c")) == 17
    assert cli(["prepare", str(tmp_path / "nope"), "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"fedrs: error: {tmp_path / 'nope'}: archive folder not found"]
    assert cli(["prepare", str(v1_sample), "--out", str(tmp_path / "c")]) == 2


def test_skip_bad_through_cli(tmp_path: Path, v1_copy: Path) -> None:
    folder = _first_s2(v1_copy)
    (folder / f"{folder.name}_B11.tif").write_bytes(b"broken")
    assert cli(["prepare", str(v1_copy), "--out", str(tmp_path / "c")]) == 2
    with pytest.warns(UserWarning):
        assert cli(["prepare", str(v1_copy), "--out", str(tmp_path / "c2"), "--skip-bad"]) == 0
    assert len(open_archive(tmp_path / "c2")) == 16


def test_written_metadata_reads_back(tmp_path: Path) -> None:
    columns = {
        "patch_id": ["S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57", "S1A_x_33UUP_1_2"],
        "labels": [["Pastures", "Inland waters"], ["Urban fabric"]],
        "split": ["train", None],
        "country": ["Austria", "Portugal"],
        "s1_name": [None, "S1A_x_33UUP_1_2"],
        "has_s1": pd.Series([False, True]),
        "has_s2": np.array([True, False]),
    }
    path = write_metadata(columns, tmp_path / "metadata.parquet")
    assert pd.read_parquet(path).columns.tolist() == list(columns)
    meta = load_metadata(path)
    assert [list(x) for x in meta["labels"]] == [["Pastures", "Inland waters"], ["Urban fabric"]]
    assert meta["split"].tolist() == ["train", None] and meta["season"].tolist()[0] == "Summer"
    assert meta["has_s1"].tolist() == [False, True] and meta["has_s2"].tolist() == [True, False]
    with pytest.raises(InputError, match="no metadata column"):
        write_metadata({"patch_id": ["p"], "colour": ["red"]}, tmp_path / "bad.parquet")


# -- transforms -----------------------------------------------------------------------------


def test_normalize_round_trip_and_collate(v1_sample: Path) -> None:
    archive = open_archive(v1_sample)
    items = [archive[i] for i in range(4)]
    batch = collate_patches(items)
    assert batch["s2"].shape == (4, 12, 120, 120)
    assert batch["has_s2"].tolist() == [it["s2"] is not None for it in items]
    s2 = batch["s2"][batch["has_s2"]]
    z = normalize(s2, "s2")
    assert torch.allclose(denormalize(z, "s2"), s2, rtol=1e-5, atol=1e-2)


def test_damaged_cache_index_and_arrays_name_the_file(tmp_path: Path, v1_sample: Path) -> None:
    source = open_archive(v1_sample, modalities=("s1", "s2"))
    out = prepare_cache(source, tmp_path / "cache")
    index = pd.read_parquet(out / "index.parquet")
    bad = index.copy()
    bad.loc[bad.index[bad["has_s2"]][0], "s2_row"] = 10_000
    bad.to_parquet(out / "index.parquet", index=False)
    with pytest.raises(CorruptPatchError, match="s2_row values outside") as info:
        open_archive(out)
    assert "index.parquet" in str(info.value)
    index.drop(columns=["s1_row"]).to_parquet(out / "index.parquet", index=False)
    with pytest.raises(CorruptPatchError, match="s1_row"):
        open_archive(out)
    index.to_parquet(out / "index.parquet", index=False)
    assert len(open_archive(out)) == len(source)
    np.save(out / "s1.npy", np.zeros((3, 2, 4, 4), np.float64))
    with pytest.raises(CorruptPatchError, match="expected float32") as info:
        open_archive(out)
    assert "s1.npy" in str(info.value)
    s2 = np.load(out / "s2_20m.npy")
    np.save(out / "s1.npy", np.zeros((9, 2, 120, 120), np.float32))
    np.save(out / "s2_20m.npy", s2.astype(np.float32))  # the cache keeps S2 as uint16
    with pytest.raises(CorruptPatchError, match="expected uint16") as info:
        open_archive(out)
    assert "s2_20m.npy" in str(info.value)
    np.save(out / "s2_20m.npy", s2[:-1])
    with pytest.raises(CorruptPatchError, match="S2 arrays of different lengths"):
        open_archive(out)
