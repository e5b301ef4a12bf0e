"""fedrs compress / decompress / search on a small synthetic archive, end to end.

The model is the smoke architecture, untrained but made content-sensitive (its analysis output
scaled, its whitening statistics set from the data) so that patches get different codes: the
properties checked here (codes read from bitstreams, round trips, federated = central) hold for
any weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from _data import SMOKE

from fedrs.cli import main as cli
from fedrs.compression import (
    DECOMPRESSED_MARKER,
    INFO_GROUP,
    TrainedModel,
    load_trained_model,
    model_fingerprint,
    record_patches,
)
from fedrs.config import load_config
from fedrs.container import CompressedArchive
from fedrs.data import open_archive, prepare_cache
from fedrs.data.synth import write_synthetic_archive
from fedrs.data.transforms import collate_patches, normalize
from fedrs.retrieval import ArchiveSearch, central_search
from fedrs.train import build_model

PATCHES = 40


@pytest.fixture(scope="module", autouse=True)
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEDRS_CACHE_DIR", str(tmp_path_factory.mktemp("fedrs-cache")))
        yield


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data") / "synthetic"
    write_synthetic_archive(
        root, patches=PATCHES, seed=3, s1_only_fraction=0.2, s2_only_fraction=0.2
    )
    meta = open_archive(root).metadata
    assert (meta["has_s1"] & ~meta["has_s2"]).any() and (meta["has_s2"] & ~meta["has_s1"]).any()
    return root


def _batch(items: list[dict[str, Any]]) -> dict[str, Any]:
    batch = collate_patches(items)
    for modality in ("s1", "s2"):
        if batch[modality] is not None:
            batch[modality] = normalize(batch[modality], modality)
    return batch


def _save_model(folder: Path, source: Path, seed: int) -> Path:
    config = load_config(SMOKE, {"seed": seed})
    model = build_model(config).eval()
    archive = open_archive(source)
    with torch.no_grad():
        for modality in model.modalities:
            last: Any = list(model.codec(modality).g_a.children())[-1]
            last.weight.mul_(30.0)
            last.bias.mul_(30.0)
        out = model(_batch([archive[i] for i in range(len(archive))]))
        masks = out["masks"]
        total = sum(out["embeddings"][m] * masks[m][:, None] for m in masks)
        fused = total / sum(masks[m][:, None].float() for m in masks)
        whiten: Any = model.hash_head.whiten
        whiten.running_mean.copy_(fused.mean(0))
        scale = 1.0 / fused.std(0).clamp_min(1e-6)
        whiten.running_whitening.copy_(torch.diag_embed(scale.view(-1, whiten.group)))
    folder.mkdir(parents=True)
    torch.save(model.state_dict(), folder / "model.pt")
    (folder / "config.toml").write_text(config.to_toml(), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, source: Path) -> Path:
    return _save_model(tmp_path_factory.mktemp("runs") / "smoke", source, seed=0)


@pytest.fixture(scope="module")
def trained(run: Path) -> TrainedModel:
    return load_trained_model(run)


@pytest.fixture(scope="module")
def compressed(tmp_path_factory: pytest.TempPathFactory, source: Path, run: Path) -> Path:
    out = tmp_path_factory.mktemp("fedrs") / "a.fedrs"
    assert cli(["compress", str(source), "--model", str(run), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def decompressed(tmp_path_factory: pytest.TempPathFactory, compressed: Path, run: Path) -> Path:
    out = tmp_path_factory.mktemp("decompressed") / "archive"
    assert cli(["decompress", str(compressed), "--model", str(run), "--out", str(out)]) == 0
    return out


def _georef(path: Path) -> tuple[str, tuple[float, ...], int, int]:
    with rasterio.open(path) as src:
        return src.crs.to_string(), tuple(src.transform)[:6], src.width, src.height


def _s2_folder(root: Path, patch_id: str) -> Path:
    return next((root / "BigEarthNet-S2").glob(f"*/{patch_id}"))


def _s1_folder(root: Path, s1_name: str) -> Path:
    return next((root / "BigEarthNet-S1").glob(f"*/{s1_name}"))


# ------------------------------------------------------------------------------------------------
# compress


def test_compress_one_record_per_patch_with_codes_from_bits(
    source: Path, compressed: Path, trained: TrainedModel
) -> None:
    patches = open_archive(source)
    meta = patches.metadata
    with CompressedArchive.open(compressed) as archive:
        assert len(archive) == len(patches) == PATCHES
        assert list(archive.patch_ids) == meta["patch_id"].tolist()
        assert archive.model_fingerprint == trained.fingerprint == model_fingerprint(trained.model)
        assert archive.meta["model"]["config"] == trained.config.model_dump(mode="json")
        assert archive.meta["georeference"] == "geotiff"
        np.testing.assert_array_equal(archive.labels, patches.labels)
        records = list(archive)
        streams: dict[str, list[Any]] = {"s1": [], "s2": []}
        for record, (_, row) in zip(records, meta.iterrows(), strict=True):
            held = {m for m in ("s1", "s2") if row[f"has_{m}"]}
            assert set(record.streams) - {INFO_GROUP} == held
            assert set(record.georef) == held
            found = record_patches(archive, record)
            for modality in ("s1", "s2"):
                streams[modality].append(found.get(modality))
        # Codes are those of hash-from-bits applied to the stored streams ...
        from_bits = trained.model.hash_from_bitstreams(streams).numpy() > 0
        np.testing.assert_array_equal(np.packbits(from_bits, axis=1), archive.codes)
        # ... and the signs of the evaluation forward pass on the images.
        with torch.no_grad():
            forward = trained.model(_batch([patches[i] for i in range(len(patches))]))["codes"]
        np.testing.assert_array_equal(np.packbits(forward.numpy() > 0, axis=1), archive.codes)
        assert len(np.unique(archive.codes, axis=0)) > PATCHES // 2  # codes tell patches apart
        # Georeference of the source files: S2 from the 10 m band B02, S1 from VV.
        for record, (_, row) in list(zip(records, meta.iterrows(), strict=True))[:12]:
            if row["has_s2"]:
                folder = _s2_folder(source, row["patch_id"])
                expected = _georef(folder / f"{row['patch_id']}_B02.tif")
                got = record.georef["s2"]
                assert (got.crs, got.transform, got.width, got.height) == expected
            if row["has_s1"]:
                folder = _s1_folder(source, row["s1_name"])
                expected = _georef(folder / f"{row['s1_name']}_VV.tif")
                got = record.georef["s1"]
                assert (got.crs, got.transform, got.width, got.height) == expected


def test_compress_refuses_existing_output_and_unknown_model(
    tmp_path: Path, source: Path, compressed: Path, run: Path, capsys: pytest.CaptureFixture
) -> None:
    assert cli(["compress", str(source), "--model", str(run), "--out", str(compressed)]) == 2
    assert "already exists" in capsys.readouterr().err
    missing = tmp_path / "nowhere"
    assert cli(["compress", str(source), "--model", str(missing), "--out", "x.fedrs"]) == 2
    assert "model not found" in capsys.readouterr().err


def test_compress_split_and_modalities(tmp_path: Path, source: Path, run: Path) -> None:
    out = tmp_path / "train-s2.fedrs"
    args = ["--model", str(run), "--out", str(out), "--split", "train", "--modalities", "s2"]
    assert cli(["compress", str(source), *args]) == 0
    meta = open_archive(source).metadata
    wanted = meta[(meta["split"] == "train") & meta["has_s2"]]["patch_id"].tolist()
    with CompressedArchive.open(out) as archive:
        assert list(archive.patch_ids) == wanted and wanted
        assert all(set(r.streams) - {INFO_GROUP} == {"s2"} for r in archive)


def test_compress_skip_bad_patch_files(
    tmp_path: Path, source: Path, run: Path, capsys: pytest.CaptureFixture
) -> None:
    copy = Path(shutil.copytree(source, tmp_path / "copy"))
    meta = open_archive(copy).metadata
    victim = meta[meta["has_s2"]]["patch_id"].iloc[3]
    band = _s2_folder(copy, victim) / f"{victim}_B05.tif"
    band.write_bytes(band.read_bytes()[:300])
    out = tmp_path / "out.fedrs"
    args = ["compress", str(copy), "--model", str(run), "--out", str(out)]
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{victim}_B05.tif" in err
    assert not out.exists() and not list(tmp_path.glob(".out.fedrs.*"))
    assert cli([*args, "--skip-bad"]) == 0
    assert f"skipped {victim}" in capsys.readouterr().out
    with CompressedArchive.open(out) as archive:
        assert len(archive) == PATCHES - 1 and victim not in archive.patch_ids


def test_compress_from_cache_uses_its_source_georeference(
    tmp_path: Path, source: Path, compressed: Path, run: Path
) -> None:
    cache = prepare_cache(open_archive(source), tmp_path / "cache")
    out = tmp_path / "from-cache.fedrs"
    assert cli(["compress", str(cache), "--model", str(run), "--out", str(out)]) == 0
    with CompressedArchive.open(out) as ours, CompressedArchive.open(compressed) as reference:
        assert ours.meta["georeference"] == "cache-source"
        np.testing.assert_array_equal(ours.codes, reference.codes)
        for i in (0, 1, len(ours) - 1):
            assert ours.record(i).georef == reference.record(i).georef


def test_compress_from_cache_without_source_records_no_georeference(
    tmp_path: Path, run: Path
) -> None:
    small = tmp_path / "small"
    write_synthetic_archive(small, patches=20, seed=5)
    cache = prepare_cache(open_archive(small), tmp_path / "cache")
    shutil.rmtree(small)
    out = tmp_path / "no-georef.fedrs"
    assert cli(["compress", str(cache), "--model", str(run), "--out", str(out)]) == 0
    with CompressedArchive.open(out) as archive:
        assert archive.meta["georeference"] == "none"
        assert all(not r.georef for r in archive)
    back = tmp_path / "back"
    assert cli(["decompress", str(out), "--model", str(run), "--out", str(back)]) == 0
    assert len(open_archive(back)) == 20


# ------------------------------------------------------------------------------------------------
# decompress


def test_decompress_is_an_archive_with_the_source_georeference(
    source: Path, compressed: Path, decompressed: Path, trained: TrainedModel
) -> None:
    original, back = open_archive(source), open_archive(decompressed)
    columns = ["patch_id", "s1_name", "split", "country", "season", "has_s1", "has_s2"]
    assert back.metadata[columns].equals(original.metadata[columns])
    np.testing.assert_array_equal(back.labels, original.labels)
    assert (decompressed / DECOMPRESSED_MARKER).is_file()
    both = original.metadata.index[original.metadata["has_s1"] & original.metadata["has_s2"]]
    item = back[int(both[0])]
    assert item["s2"].shape == (12, 120, 120) and item["s1"].shape == (2, 120, 120)

    row = original.metadata.loc[int(both[0])]
    pid, s1_name = str(row["patch_id"]), str(row["s1_name"])
    s2_src, s2_out = _s2_folder(source, pid), _s2_folder(decompressed, pid)
    for band, size in (("B02", 120), ("B05", 60), ("B01", 20)):
        with rasterio.open(s2_out / f"{pid}_{band}.tif") as f:
            assert (f.width, f.height, f.dtypes[0]) == (size, size, "uint16")
        assert _georef(s2_out / f"{pid}_{band}.tif") == _georef(s2_src / f"{pid}_{band}.tif")
    s1_src, s1_out = _s1_folder(source, s1_name), _s1_folder(decompressed, s1_name)
    for band in ("VV", "VH"):
        with rasterio.open(s1_out / f"{s1_name}_{band}.tif") as f:
            assert f.dtypes[0] == "float32"
        assert _georef(s1_out / f"{s1_name}_{band}.tif") == _georef(
            s1_src / f"{s1_name}_{band}.tif"
        )

    # Pixel values: the model's reconstruction, rounded (10 m) or block-averaged (20 m).
    from fedrs.data.transforms import denormalize

    with CompressedArchive.open(compressed) as archive:
        patches = record_patches(archive, archive.record(pid))
    decoded = trained.model.decompress({m: [p] for m, p in patches.items()})["x_hat"]
    s2 = denormalize(decoded["s2"], "s2")[0].numpy().astype(np.float64)
    with rasterio.open(s2_out / f"{pid}_B02.tif") as f:
        np.testing.assert_array_equal(f.read(1), np.clip(np.rint(s2[1]), 0, 65535))
    with rasterio.open(s2_out / f"{pid}_B05.tif") as f:
        block = s2[4].reshape(60, 2, 60, 2).mean(axis=(1, 3))
        np.testing.assert_array_equal(f.read(1), np.clip(np.rint(block), 0, 65535))
    s1 = denormalize(decoded["s1"], "s1")[0].numpy()
    with rasterio.open(s1_out / f"{s1_name}_VH.tif") as f:
        np.testing.assert_array_equal(f.read(1), s1[1])


def test_decompress_refuses_another_model_and_accepts_bare_weights(
    tmp_path: Path, source: Path, compressed: Path, run: Path, capsys: pytest.CaptureFixture
) -> None:
    other = _save_model(tmp_path / "other", source, seed=1)
    args = ["decompress", str(compressed), "--out", str(tmp_path / "out")]
    assert cli([*args, "--model", str(other)]) == 2
    assert "not the model of" in capsys.readouterr().err
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(run / "model.pt", bare / "model.pt")  # no config.toml: the archive's is used
    assert cli([*args, "--model", str(bare / "model.pt")]) == 0
    assert cli([*args, "--model", str(bare / "model.pt")]) == 2  # the folder is not empty
    assert "--overwrite" in capsys.readouterr().err
    assert cli([*args, "--model", str(bare / "model.pt"), "--overwrite"]) == 0


def test_corrupt_record_is_named_and_skipped_on_request(
    tmp_path: Path, compressed: Path, run: Path, capsys: pytest.CaptureFixture
) -> None:
    damaged = tmp_path / "damaged.fedrs"
    shutil.copy(compressed, damaged)
    with CompressedArchive.open(damaged) as archive:
        victim = archive.record(5)
        total = len(archive)
    payload = next(iter(victim.streams.values()))["y"]
    data = bytearray(damaged.read_bytes())
    at = data.find(payload) + len(payload) // 2
    data[at] ^= 0xFF
    damaged.write_bytes(bytes(data))

    out = tmp_path / "out"
    args = ["decompress", str(damaged), "--model", str(run), "--out", str(out)]
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and victim.patch_id in err and "checksum" in err
    assert cli([*args, "--overwrite", "--skip-bad"]) == 0
    assert f"skipped {victim.patch_id}" in capsys.readouterr().out
    back = open_archive(out)
    assert len(back) == total - 1 and victim.patch_id not in set(back.metadata["patch_id"])
    # The index is intact: the damaged archive is still searchable.
    assert cli(["search", "--archive", str(damaged), "--query-id", victim.patch_id, "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert hits[0]["distance"] == 0


def test_other_container_version_is_refused(
    tmp_path: Path, compressed: Path, run: Path, capsys: pytest.CaptureFixture
) -> None:
    future = tmp_path / "future.fedrs"
    data = bytearray(compressed.read_bytes())
    data[8:10] = (2).to_bytes(2, "little")
    future.write_bytes(bytes(data))
    for args in (
        ["search", "--archive", str(future), "--query-id", "x"],
        ["decompress", str(future), "--model", str(run), "--out", str(tmp_path / "o")],
    ):
        assert cli(args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "format version 2" in err


# ------------------------------------------------------------------------------------------------
# search


@pytest.fixture(scope="module")
def second(tmp_path_factory: pytest.TempPathFactory, run: Path) -> Path:
    root = tmp_path_factory.mktemp("data-b") / "synthetic-b"
    write_synthetic_archive(root, patches=16, seed=11, s1_only_fraction=0.25)
    out = root.parent / "b.fedrs"
    assert cli(["compress", str(root), "--model", str(run), "--out", str(out)]) == 0
    return out


def test_search_by_id_over_two_archives_equals_central(
    compressed: Path, second: Path, capsys: pytest.CaptureFixture
) -> None:
    with CompressedArchive.open(second) as b:
        query_id = b.patch_ids[2]
        code = b.codes[2]
    args = ["search", "--archive", str(compressed), "--archive", str(second)]
    assert cli([*args, "--query-id", query_id, "--k", "12", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["query"]["code"] == code.tobytes().hex()
    archives = [CompressedArchive.open(compressed), CompressedArchive.open(second)]
    expected = central_search([ArchiveSearch(a) for a in archives], code[None, :], 12)[0]
    got = [(h["patch_id"], h["archive"], h["distance"]) for h in answer["hits"]]
    assert got == [(h.patch_id, h.archive_name, h.distance) for h in expected]
    assert len(got) == 12 and {h["archive"] for h in answer["hits"]} == {"a", "b"}
    for hit in answer["hits"]:
        archive = archives[0] if hit["archive"] == "a" else archives[1]
        labels = archive.labels[archive.position(hit["patch_id"])]
        assert hit["labels"] == [archive.label_names[i] for i in np.flatnonzero(labels)]

    assert cli([*args, "--query-id", query_id, "--k", "3"]) == 0
    table = capsys.readouterr().out
    assert expected[0].patch_id in table and "distance" in table
    assert cli([*args, "--query-id", "no-such-patch"]) == 2
    assert "no-such-patch" in capsys.readouterr().err


def test_search_by_query_patch_hashes_like_the_archive(
    source: Path, compressed: Path, run: Path, capsys: pytest.CaptureFixture
) -> None:
    meta = open_archive(source).metadata
    both = meta[meta["has_s1"] & meta["has_s2"]].iloc[1]
    folders = [_s2_folder(source, both["patch_id"]), _s1_folder(source, both["s1_name"])]
    args = ["search", "--archive", str(compressed), "--k", "5", "--json"]
    query = [a for f in folders for a in ("--query-patch", str(f))]
    assert cli([*args, *query, "--model", str(run)]) == 0
    answer = json.loads(capsys.readouterr().out)
    with CompressedArchive.open(compressed) as archive:
        stored = archive.codes[archive.position(both["patch_id"])]
    assert answer["query"]["code"] == stored.tobytes().hex()
    assert answer["query"]["modalities"] == ["s1", "s2"]
    assert answer["hits"][0]["distance"] == 0
    assert both["patch_id"] in [h["patch_id"] for h in answer["hits"] if h["distance"] == 0]

    assert cli([*args, *query]) == 2  # no --model
    assert "--model" in capsys.readouterr().err
    assert cli([*args, "--query-id", "x", *query, "--model", str(run)]) == 2
    assert cli([*args, "--query-patch", str(source), "--model", str(run)]) == 2
    assert "no Sentinel-2 band files" in capsys.readouterr().err


def test_search_real_v1_patch_folder(
    v1_sample: Path, compressed: Path, run: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = sorted((v1_sample / "BigEarthNet-v1.0").iterdir())[0]
    args = ["search", "--archive", str(compressed), "--query-patch", str(folder)]
    assert cli([*args, "--model", str(run), "--k", "4", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["query"]["patch"] == folder.name and answer["query"]["modalities"] == ["s2"]
    assert len(answer["hits"]) == 4


# ------------------------------------------------------------------------------------------------
# crafted archives


def _forge(source: Path, target: Path, edit: Any) -> Path:
    """A copy of ``source`` whose records pass through ``edit(position, record)`` (which may
    give ids, names and shapes the writer would refuse)."""
    import fedrs.container.writer as container
    from fedrs.container import ArchiveWriter

    with CompressedArchive.open(source) as archive, pytest.MonkeyPatch.context() as writing:
        writing.setattr(container, "name_problem", lambda name: None, raising=False)
        with ArchiveWriter(
            target,
            hash_bits=archive.hash_bits,
            model_fingerprint=archive.model_fingerprint,
            meta=archive.meta,
            label_names=archive.label_names,
        ) as writer:
            for position in range(len(archive)):
                writer.add(edit(position, archive.record(position)))
    return target


def _files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def test_decompress_never_writes_outside_out(
    tmp_path: Path, compressed: Path, run: Path, capsys: pytest.CaptureFixture
) -> None:
    """Patch ids and S1 names that traverse, or are absolute, are damaged records: refused
    (naming them) or skipped with --skip-bad; nothing is written outside --out."""
    escape = tmp_path / "escape"
    escape.mkdir()
    s2_id = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57"
    bad_ids = {1: "../../../escape/" + s2_id, 3: str(escape / s2_id)}
    with CompressedArchive.open(compressed) as archive:
        total = len(archive)
        with_s1 = next(i for i in range(4, total) if "s1" in archive.record(i).streams)
    bad_s1 = {with_s1: "../../../escape/S1A_IW_GRDH_1SDV_20170613T165043_33UUP_61_39"}

    def edit(position: int, record: Any) -> Any:
        if position in bad_ids:
            record.patch_id = bad_ids[position]
        if position in bad_s1:
            info = {"s1_name": bad_s1[position]}
            record.streams[INFO_GROUP] = {"json": json.dumps(info).encode()}
        return record

    forged = _forge(compressed, tmp_path / "forged.fedrs", edit)
    out = tmp_path / "work" / "out"
    out.parent.mkdir()
    args = ["decompress", str(forged), "--model", str(run), "--out", str(out)]
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot name a file" in err and repr(bad_ids[1]) in err
    assert cli([*args, "--overwrite", "--skip-bad"]) == 0
    printed = capsys.readouterr().out
    for name in (*bad_ids.values(), "S1 name"):
        assert name in printed
    assert len(open_archive(out)) == total - 3
    assert {p for p in _files_under(tmp_path) if not p.is_relative_to(out)} == {forged}
    assert not (Path("/") / "escape").exists()


def test_decompress_checks_latent_shapes_before_decoding(
    tmp_path: Path, compressed: Path, run: Path, capsys: pytest.CaptureFixture
) -> None:
    """Shapes that disagree with the patch size and the codec's stride are damaged records,
    found before anything is allocated from them (a 3000 x 3000 z would take 1.4 GB; a
    60000 x 60000 image fails inside torch, past --skip-bad)."""
    shapes = {
        2: {"image": [120, 120], "z": [3000, 3000]},
        4: {"image": [60000, 60000], "z": [938, 938]},
        6: {"image": [120, 120], "z": [2, 3]},
    }

    def edit(position: int, record: Any) -> Any:
        if position in shapes:
            for modality in record.shapes:
                record.shapes[modality] = shapes[position]
        return record

    forged = _forge(compressed, tmp_path / "forged.fedrs", edit)
    out = tmp_path / "out"
    args = ["decompress", str(forged), "--model", str(run), "--out", str(out)]
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "latent z shape 3000x3000 does not fit a 120x120" in err
    assert cli([*args, "--overwrite", "--skip-bad"]) == 0
    printed = capsys.readouterr().out
    assert "image size 60000x60000 is not the patch size 120x120" in printed
    assert "latent z shape 2x3" in printed
    with CompressedArchive.open(compressed) as archive:
        ids = archive.patch_ids
    back = set(open_archive(out).metadata["patch_id"])
    assert back == set(ids) - {ids[p] for p in shapes}
