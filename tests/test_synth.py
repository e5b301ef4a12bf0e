"""The synthetic BigEarthNet-like archive (fedrs.data.synth, fedrs synth)."""

from __future__ import annotations

import json
import multiprocessing
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import rasterio

from fedrs.cli import main as cli_main
from fedrs.data.facts import (
    LABELS_19,
    S1_BANDS,
    S1_MEAN,
    S1_STD,
    S2_BANDS,
    S2_MEAN,
    S2_PIXELS_PER_SIDE,
    S2_RESOLUTION_M,
    S2_STD,
)
from fedrs.data.metadata import labels_matrix, load_metadata
from fedrs.data.synth import (
    MARKER,
    METADATA_COLUMNS,
    PARTIAL_MARKER,
    S1_DIR,
    S2_DIR,
    default_synthetic_root,
    ensure_synthetic_archive,
    is_synthetic_archive,
    write_synthetic_archive,
)
from fedrs.data.synth.plan import make_plan
from fedrs.data.synth.stats import build_stats, load_stats, tile_origin, write_stats
from fedrs.errors import InputError

PATCHES, SEED = 480, 7
S2_NAME = re.compile(
    r"^(?P<product>S2[AB]_MSIL2A_(?P<date>\d{8})T\d{6}_N9999_R\d{3}_T(?P<tile>\d{2}[A-Z]{3}))"
    r"_(?P<col>\d+)_(?P<row>\d+)$"
)
S1_NAME = re.compile(
    r"^(?P<product>S1[AB]_IW_GRDH_1SDV_(?P<date>\d{8})T\d{6})_(?P<tile>\d{2}[A-Z]{3})"
    r"_(?P<col>\d+)_(?P<row>\d+)$"
)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "archive"
    write_synthetic_archive(
        root, patches=PATCHES, seed=SEED, s1_only_fraction=0.1, s2_only_fraction=0.1
    )
    return root


@pytest.fixture(scope="module")
def pixels(archive: Path) -> dict[str, np.ndarray]:
    """Per-patch band means and pooled sums, read back from the GeoTIFFs with rasterio."""
    meta = pd.read_parquet(archive / "metadata.parquet")
    s2_rows = meta[meta["has_s2"]]
    means = np.zeros((len(s2_rows), len(S2_BANDS)))
    sums = np.zeros((len(S2_BANDS), 3))  # count, sum, sum of squares
    for n, pid in enumerate(s2_rows["patch_id"]):
        folder = archive / S2_DIR / S2_NAME.match(pid)["product"] / pid  # type: ignore[index]
        for b, band in enumerate(S2_BANDS):
            with rasterio.open(folder / f"{pid}_{band}.tif") as src:
                data = src.read(1).astype(np.float64)
            means[n, b] = data.mean()
            sums[b] += (data.size, data.sum(), np.square(data).sum())
    s1_sums = np.zeros((len(S1_BANDS), 3))
    for name in meta.loc[meta["has_s1"], "s1_name"]:
        folder = archive / S1_DIR / S1_NAME.match(name)["product"] / name  # type: ignore[index]
        for b, band in enumerate(S1_BANDS):
            with rasterio.open(folder / f"{name}_{band}.tif") as src:
                data = src.read(1).astype(np.float64)
            s1_sums[b] += (data.size, data.sum(), np.square(data).sum())
    return {
        "means": means,
        "labels": labels_matrix(s2_rows["labels"]),
        "split": s2_rows["split"].to_numpy(),
        "s2_sums": sums,
        "s1_sums": s1_sums,
    }


def _moments(sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = sums[:, 1] / sums[:, 0]
    return mean, np.sqrt(sums[:, 2] / sums[:, 0] - mean**2)


# ------------------------------------------------------------------------------------------
# Layout and GeoTIFFs


def test_metadata_has_official_columns(archive: Path) -> None:
    meta = pd.read_parquet(archive / "metadata.parquet")
    assert tuple(meta.columns) == METADATA_COLUMNS
    assert len(meta) == PATCHES and meta["patch_id"].is_unique
    assert set(meta["split"]) <= {"train", "validation", "test"}
    assert set(meta.explode("labels")["labels"]) <= set(LABELS_19)
    assert meta["labels"].map(len).min() >= 1
    assert meta["contains_seasonal_snow"].dtype == bool
    assert not meta["contains_cloud_or_shadow"].any()
    for row in meta.itertuples():
        v1 = re.fullmatch(r"(S2[AB]_MSIL2A_\d{8}T\d{6})_(\d+_\d+)", row.s2v1_name)
        assert v1 is not None
        if row.has_s2:
            s2 = S2_NAME.match(row.patch_id)
            assert s2 is not None and s2["product"].startswith(v1[1])
            assert f"{s2['col']}_{s2['row']}" == v1[2]
        if row.has_s1:
            s1 = S1_NAME.match(row.s1_name)
            assert s1 is not None and f"{s1['col']}_{s1['row']}" == v1[2]
    # Readable by the metadata loader of the archive readers, seasons spread over the year.
    loaded = load_metadata(archive / "metadata.parquet")
    assert set(loaded["season"]) == {"Winter", "Spring", "Summer", "Fall"}


def test_geotiffs_have_native_sizes_crs_and_transforms(archive: Path) -> None:
    meta = pd.read_parquet(archive / "metadata.parquet")
    both = meta[meta["has_s1"] & meta["has_s2"]].head(6)
    assert len(both) == 6
    for row in both.itertuples():
        s2 = S2_NAME.match(row.patch_id)
        assert s2 is not None
        epsg, ulx, uly = tile_origin(s2["tile"])
        x0 = ulx + 1200 * int(s2["col"])
        y0 = uly - 1200 * int(s2["row"])
        folder = archive / S2_DIR / s2["product"] / row.patch_id
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            f"{row.patch_id}_{b}.tif" for b in S2_BANDS
        )
        for band in S2_BANDS:
            res = S2_RESOLUTION_M[band]
            with rasterio.open(folder / f"{row.patch_id}_{band}.tif") as src:
                assert (src.count, src.dtypes[0]) == (1, "uint16")
                assert src.shape == (S2_PIXELS_PER_SIDE[res],) * 2
                assert src.crs.to_epsg() == epsg
                assert tuple(src.transform)[:6] == (res, 0.0, x0, 0.0, -res, y0)
                assert src.nodata == 0
                assert src.read(1).min() >= 1
        s1 = S1_NAME.match(row.s1_name)
        assert s1 is not None and s1["tile"] == s2["tile"]
        folder = archive / S1_DIR / s1["product"] / row.s1_name
        for band in S1_BANDS:
            with rasterio.open(folder / f"{row.s1_name}_{band}.tif") as src:
                assert (src.count, src.dtypes[0], src.shape) == (1, "float32", (120, 120))
                assert src.crs.to_epsg() == epsg
                assert tuple(src.transform)[:6] == (10.0, 0.0, x0, 0.0, -10.0, y0)
                assert np.isfinite(src.read(1)).all()


def test_modality_fractions(archive: Path) -> None:
    meta = pd.read_parquet(archive / "metadata.parquet")
    s1_only = meta[~meta["has_s2"]]
    s2_only = meta[~meta["has_s1"]]
    assert len(s1_only) == len(s2_only) == PATCHES // 10
    assert (s1_only["patch_id"] == s1_only["s1_name"]).all()
    assert s2_only["s1_name"].isna().all()
    s2_found = {p.name for p in (archive / S2_DIR).glob("*/*")}
    s1_found = {p.name for p in (archive / S1_DIR).glob("*/*")}
    assert s2_found == set(meta.loc[meta["has_s2"], "patch_id"])
    assert s1_found == set(meta.loc[meta["has_s1"], "s1_name"])

    from fedrs.data import open_archive

    opened = open_archive(archive)
    assert len(opened) == PATCHES
    assert int(opened.metadata["has_s1"].sum()) == int(opened.metadata["has_s2"].sum()) == 432
    item = opened[int(np.flatnonzero(~opened.metadata["has_s2"].to_numpy())[0])]
    assert item["s2"] is None and tuple(item["s1"].shape) == (2, 120, 120)


# ------------------------------------------------------------------------------------------
# Rows drawn from the real metadata


def test_rows_follow_real_frequencies(v2_metadata: Path) -> None:
    real = pd.read_parquet(v2_metadata, columns=["labels", "country"])
    plan = make_plan(load_stats(), 4000, 11, 0.0, 0.0)
    synthetic = plan.metadata
    real_y = labels_matrix(real["labels"])
    synth_y = labels_matrix(synthetic["labels"])
    real_freq, synth_freq = real_y.mean(axis=0), synth_y.mean(axis=0)
    # 4,000 draws: binomial standard error <= 0.008.
    np.testing.assert_allclose(synth_freq, real_freq, atol=0.03)
    real_share = real["country"].value_counts(normalize=True)
    synth_share = synthetic["country"].value_counts(normalize=True)
    assert (synth_share.reindex(real_share.index, fill_value=0) - real_share).abs().max() < 0.03
    # Label co-occurrence: the most frequent pair of the real archive is frequent here too.
    real_pairs = real_y.T @ real_y / len(real)
    synth_pairs = synth_y.T @ synth_y / len(synthetic)
    np.testing.assert_allclose(synth_pairs, real_pairs, atol=0.03)


def test_tile_origin_matches_real_patch() -> None:
    # Real v2 patch S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_75_43, B02: origin
    # (390000, 5348400) in EPSG:32633, i.e. tile corner + (75, -43) x 1200 m.
    assert tile_origin("33UUP") == (32633, 300000.0, 5400000.0)
    assert tile_origin("T34VER")[0] == 32634
    with pytest.raises(InputError):
        tile_origin("33XYZ1")


def test_stats_regenerate_from_real_metadata(tmp_path: Path, v2_metadata: Path) -> None:
    real = pd.read_parquet(v2_metadata)
    packaged = load_stats()
    counts = real["country"].value_counts()
    assert {c.name: c.patches for c in packaged.countries} == counts.to_dict()
    assert packaged.rows == len(real)
    sample = real[real["country"].isin(["Kosovo", "Switzerland"])]
    path = write_stats(build_stats(sample, min_count=1), tmp_path / "stats.json")
    rebuilt = load_stats(path)
    assert [c.name for c in rebuilt.countries] == ["Kosovo", "Switzerland"]
    for country in rebuilt.countries:
        original = next(c for c in packaged.countries if c.name == country.name)
        assert country.patches == original.patches
        assert country.split == original.split
        assert int(country.label_set_patches.sum()) == country.patches  # min_count=1 keeps all
        assert [p.s2 for p in country.products] == [p.s2 for p in original.products]


# ------------------------------------------------------------------------------------------
# Pixels: statistics and learnability


def test_band_statistics_close_to_bigearthnet(pixels: dict[str, np.ndarray]) -> None:
    """Per-band mean and std over the archive close to facts.json.

    Measured on this 480-patch archive (432 with S2, 432 with S1): S2 means within 2.0 % and
    stds within 3.2 % of BigEarthNet's; S1 means and stds within 0.7 %.  Other seeds at this
    size stay within about 6 %; the test allows 10 % (S2) and 5 % (S1).
    """
    mean, std = _moments(pixels["s2_sums"])
    np.testing.assert_allclose(mean, S2_MEAN, rtol=0.10)
    np.testing.assert_allclose(std, S2_STD, rtol=0.10)
    s1_mean, s1_std = _moments(pixels["s1_sums"])
    np.testing.assert_allclose(s1_mean, S1_MEAN, rtol=0.05)
    np.testing.assert_allclose(s1_std, S1_STD, rtol=0.05)


def _logistic_regression(x: np.ndarray, y: np.ndarray, steps: int = 3000) -> np.ndarray:
    """One-vs-rest logistic regression by full-batch gradient descent; returns (F+1, C)."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros((xb.shape[1], y.shape[1]))
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(xb @ w)))
        w -= 0.5 * (xb.T @ (p - y) / len(x) + 1e-3 * w)
    return w


def _auc(score: np.ndarray, target: np.ndarray) -> float:
    ranks = score.argsort().argsort() + 1.0
    pos = target > 0
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_precision(score: np.ndarray, target: np.ndarray) -> float:
    order = np.argsort(-score, kind="stable")
    hits = target[order] > 0
    return float((np.cumsum(hits)[hits] / (np.flatnonzero(hits) + 1)).mean())


def test_labels_learnable_from_band_means(pixels: dict[str, np.ndarray]) -> None:
    """Logistic regression on the 12 per-band log means, train split -> validation + test.

    Figures on this archive (432 patches with S2: 216 train, 216 held out): macro ROC-AUC
    0.77 (chance 0.5); micro average precision 0.58 against 0.30 for label-frequency scores;
    micro-F1 0.56 (threshold 0.25, chosen on the training patches) against 0.40 for the best
    constant prediction (the k most frequent training labels for every patch).
    """
    features = np.log(pixels["means"])
    labels = pixels["labels"]
    train = pixels["split"] == "train"
    mu, sd = features[train].mean(axis=0), features[train].std(axis=0)
    x = (features - mu) / sd
    w = _logistic_regression(x[train], labels[train])
    held_x, held_y = x[~train], labels[~train]
    prob = 1.0 / (1.0 + np.exp(-(np.hstack([held_x, np.ones((len(held_x), 1))]) @ w)))

    both = [j for j in range(len(LABELS_19)) if 0 < held_y[:, j].sum() < len(held_y)]
    macro_auc = np.mean([_auc(prob[:, j], held_y[:, j]) for j in both])
    micro_ap = _average_precision(prob.ravel(), held_y.ravel())
    prevalence = np.broadcast_to(labels[train].mean(axis=0), held_y.shape)
    baseline_ap = _average_precision(prevalence.ravel(), held_y.ravel())

    def f1(pred: np.ndarray) -> float:
        return float(2 * (pred * held_y).sum() / (pred.sum() + held_y.sum()))

    train_prob = 1.0 / (1.0 + np.exp(-(np.hstack([x[train], np.ones((train.sum(), 1))]) @ w)))
    cuts = np.linspace(0.05, 0.95, 19)
    train_f1 = [
        2
        * ((train_prob > c) * labels[train]).sum()
        / ((train_prob > c).sum() + labels[train].sum())
        for c in cuts
    ]
    threshold = cuts[int(np.argmax(train_f1))]
    ranked = np.argsort(-labels[train].mean(axis=0))
    baseline_f1 = max(
        f1(np.broadcast_to(np.isin(np.arange(len(LABELS_19)), ranked[:k]), held_y.shape))
        for k in range(1, 8)
    )
    assert macro_auc > 0.72
    assert micro_ap > 1.5 * baseline_ap
    assert f1(prob > threshold) > baseline_f1 + 0.05


def test_same_seed_same_files_other_seed_differs(tmp_path: Path) -> None:
    kwargs = {"patches": 40, "s1_only_fraction": 0.2, "s2_only_fraction": 0.2}
    first = write_synthetic_archive(tmp_path / "a", seed=3, **kwargs)  # type: ignore[arg-type]
    second = write_synthetic_archive(tmp_path / "b", seed=3, **kwargs)  # type: ignore[arg-type]
    other = write_synthetic_archive(tmp_path / "c", seed=4, **kwargs)  # type: ignore[arg-type]
    pd.testing.assert_frame_equal(first, second)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.tif"))
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.tif"))
    assert files_a == files_b and len(files_a) == 8 * 12 + 8 * 2 + 24 * 14
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    assert (tmp_path / "a" / "metadata.parquet").read_bytes() == (
        tmp_path / "b" / "metadata.parquet"
    ).read_bytes()
    assert not set(first["patch_id"]) & set(other["patch_id"])
    pixels_a = {(tmp_path / "a" / rel).read_bytes()[-28800:] for rel in files_a}
    pixels_c = {p.read_bytes()[-28800:] for p in (tmp_path / "c").rglob("*.tif")}
    assert not pixels_a & pixels_c


# ------------------------------------------------------------------------------------------
# Cached default data


def test_default_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FEDRS_CACHE_DIR", str(tmp_path / "cache"))
    assert default_synthetic_root(2000, 0) == tmp_path / "cache" / "synthetic-2000-0"
    monkeypatch.delenv("FEDRS_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    expected = tmp_path / "home" / ".cache" / "fedrs" / "synthetic-5-1"
    assert default_synthetic_root(5, 1) == expected


def test_ensure_reuses_complete_and_rebuilds_incomplete(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FEDRS_CACHE_DIR", str(tmp_path))
    root = ensure_synthetic_archive(patches=12, seed=5)
    assert root == tmp_path / "synthetic-12-5"
    assert is_synthetic_archive(root, patches=12, seed=5)
    marker = json.loads((root / MARKER).read_text())
    assert (marker["patches"], marker["seed"]) == (12, 5)
    tifs = sorted(root.rglob("*.tif"))
    stamps = {p: p.stat().st_mtime_ns for p in [*tifs, root / "metadata.parquet"]}
    content = {p: p.read_bytes() for p in tifs}

    assert ensure_synthetic_archive(root, patches=12, seed=5) == root
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing rewritten

    # An interrupted write: marker gone, files missing, partial marker left behind.
    (root / MARKER).unlink()
    (root / PARTIAL_MARKER).write_text("writing\n")
    tifs[0].unlink()
    (root / "metadata.parquet").unlink()
    assert not is_synthetic_archive(root, patches=12, seed=5)
    ensure_synthetic_archive(root, patches=12, seed=5)
    assert is_synthetic_archive(root, patches=12, seed=5)
    assert not (root / PARTIAL_MARKER).exists()
    assert {p: p.read_bytes() for p in tifs} == content

    # Other parameters in the same folder: rebuilt with them.
    ensure_synthetic_archive(root, patches=6, seed=5)
    assert is_synthetic_archive(root, patches=6, seed=5)
    assert len(pd.read_parquet(root / "metadata.parquet")) == 6
    assert len(list(root.rglob("*.tif"))) == 6 * 14


def _ensure_after(barrier: Any, root: Path, patches: int) -> None:
    barrier.wait()
    ensure_synthetic_archive(root, patches=patches, seed=5)


@pytest.mark.skipif(sys.platform == "win32", reason="advisory locks are POSIX")
def test_ensure_from_processes_at_once(tmp_path: Path) -> None:
    """Runs started together on an empty cache: one writes the archive, the others wait."""
    root = tmp_path / "synthetic-48-5"
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(4)
    workers = [ctx.Process(target=_ensure_after, args=(barrier, root, 48)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    assert is_synthetic_archive(root, patches=48, seed=5)
    assert not (root / PARTIAL_MARKER).exists()
    assert len(list(root.rglob("*.tif"))) == 48 * 14


def test_refuses_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        ensure_synthetic_archive(tmp_path, patches=3, seed=0)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


# ------------------------------------------------------------------------------------------
# CLI


def test_cli_writes_and_keeps_archive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "synthetic"
    args = ["synth", "--out", str(out), "--patches", "10", "--seed", "2"]
    assert cli_main([*args, "--s1-only-fraction", "0.3"]) == 0
    meta = pd.read_parquet(out / "metadata.parquet")
    assert len(meta) == 10 and int((~meta["has_s2"]).sum()) == 3
    stamp = (out / "metadata.parquet").stat().st_mtime_ns
    assert cli_main([*args, "--s1-only-fraction", "0.3"]) == 0
    assert "complete already" in capsys.readouterr().out
    assert (out / "metadata.parquet").stat().st_mtime_ns == stamp
    assert cli_main(args) == 0  # other parameters: written again
    assert bool(pd.read_parquet(out / "metadata.parquet")["has_s2"].all())


@pytest.mark.parametrize(
    "extra",
    [
        ["--patches", "-5"],
        ["--patches", "0"],
        ["--seed", "-1"],
        ["--s1-only-fraction", "1.5"],
        ["--s2-only-fraction", "-0.1"],
        ["--s1-only-fraction", "0.7", "--s2-only-fraction", "0.6"],
    ],
)
def test_cli_bad_values_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str]
) -> None:
    out = tmp_path / "never"
    assert cli_main(["synth", "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedrs: error: ")
    assert not out.exists()


def test_cli_refuses_non_archive_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "data.csv").write_text("a,b\n")
    assert cli_main(["synth", "--out", str(tmp_path), "--patches", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path) in err[0] and "not empty" in err[0]
    assert cli_main(["synth", "--out", str(tmp_path / "data.csv"), "--patches", "4"]) == 2
