"""Rate-distortion: the learned codec vs JPEG 2000 (GDAL's JP2OpenJPEG through rasterio).

On the real BigEarthNet patches in the repository (tests/data/bigearthnet/v1-sample, or
$FEDRS_SHARED_DATA/v1-sample when that is set) and on synthetic ones, both coders compress the
same patches; bits per pixel (bits of a patch over its 120 x 120 pixels, all bands together) and
PSNR per modality (S2: peak 10000 digital numbers; S1: 60 dB range), measured against the items
the reader returns.  JPEG 2000 codes every band at its native resolution (uint16; S1 dB mapped
linearly from [-50, 10] dB to 0..65535) at several quality settings; its reconstruction is
upsampled exactly as the reader does.

With no ``--model`` the codec is trained here (stage 1 of experiments/default.toml, a few minutes
on 2 cores).  A PNG of the curves is saved; the last line is a JSON object of the figures.

    python bench/rd.py [--model RUN_DIR ...] [--train-batches 150] [--out bench-rd.png]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import MemoryFile

REPO = Path(__file__).resolve().parents[1]
# The real BigEarthNet reference data: the copy in tests/data unless $FEDRS_SHARED_DATA names one.
DATA_ROOT = Path(os.environ.get("FEDRS_SHARED_DATA") or REPO / "tests" / "data" / "bigearthnet")
QUALITIES = (0.25, 0.5, 1, 2, 4, 8, 15, 30)
S1_RANGE = (-50.0, 10.0)
PEAK = {"s2": 10000.0, "s1": 60.0}


def jp2_roundtrip(
    bands: np.ndarray, quality: float, codec: str | None = None
) -> tuple[np.ndarray, int]:
    """Encode uint16 (C, H, W) as one JPEG 2000 file in memory; return decoded bands, bytes.

    ``codec`` is JP2OpenJPEG's ``CODEC`` (``"JP2"``: JP2 boxes around the codestream, ``"J2K"``:
    the bare codestream); by default the driver's choice."""
    options = {} if codec is None else {"CODEC": codec}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with MemoryFile() as memfile:
            with memfile.open(
                driver="JP2OpenJPEG",
                width=bands.shape[2],
                height=bands.shape[1],
                count=bands.shape[0],
                dtype="uint16",
                QUALITY=quality,
                REVERSIBLE="NO",
                **options,
            ) as dst:
                dst.write(bands)
            data = memfile.read()
        with MemoryFile(data) as memfile, memfile.open() as src:
            return src.read(), len(data)


def jp2_patch(archive: Any, row: int, modality: str, quality: float) -> tuple[np.ndarray, int]:
    """Decoded item (physical values, 120x120) and bytes of one patch: one multi-band JPEG 2000
    file per resolution group (S2: 10, 20, 60 m; S1: VV+VH)."""
    from fedrs.data.geotiff import upsample_s2

    if modality == "s2":
        decoded, size = {}, 0
        for res, bands in archive.read_s2_native(row).items():
            decoded[res], n = jp2_roundtrip(np.asarray(bands, dtype=np.uint16), quality)
            size += n
        return upsample_s2(decoded, archive.resample).numpy(), size
    lo, hi = S1_RANGE
    scaled = np.clip((archive.read_s1(row) - lo) / (hi - lo), 0, 1) * 65535
    rec, size = jp2_roundtrip(np.rint(scaled).astype(np.uint16), quality)
    return rec.astype(np.float32) / 65535 * (hi - lo) + lo, size


def jpeg2000_curve(archive: Any, rows: np.ndarray, modality: str) -> list[dict[str, float]]:
    points = []
    for quality in QUALITIES:
        sq, values, bits = 0.0, 0, 0
        for row in rows:
            item = archive[int(row)][modality].numpy()
            decoded, size = jp2_patch(archive, int(row), modality, quality)
            sq += float(((decoded.astype(np.float64) - item) ** 2).sum())
            values += item.size
            bits += 8 * size
        mse = sq / values
        points.append(
            {
                "quality": quality,
                "bpp": bits / (len(rows) * 120 * 120),
                "psnr": 10 * math.log10(PEAK[modality] ** 2 / max(mse, 1e-12)),
            }
        )
    return points


def model_point(model: Any, cache: Any, rows: np.ndarray, modality: str) -> dict[str, float]:
    from fedrs.train import encode_rows

    encoded = encode_rows(model, cache, rows, decode=True, modalities=(modality,))
    mse = encoded["sq_error"][modality] / encoded["values"][modality]
    return {
        "bpp": encoded["bits"][modality] / (encoded["patches"][modality] * 120 * 120),
        "psnr": 10 * math.log10(PEAK[modality] ** 2 / max(mse, 1e-12)),
    }


def psnr_at(points: list[dict[str, float]], bpp: float) -> float | None:
    """JPEG 2000's PSNR at ``bpp``, interpolated linearly between measured points."""
    xs = [p["bpp"] for p in points]
    if not xs or bpp < min(xs) or bpp > max(xs):
        return None
    order = np.argsort(xs)
    return float(np.interp(bpp, np.asarray(xs)[order], [points[i]["psnr"] for i in order]))


def bpp_at(points: list[dict[str, float]], psnr: float) -> float | None:
    """JPEG 2000's bpp at ``psnr`` (linear between the points, which rise with quality)."""
    ordered = sorted(points, key=lambda p: p["quality"])
    for low, high in itertools.pairwise(ordered):
        if low["psnr"] <= psnr <= high["psnr"]:
            t = (psnr - low["psnr"]) / max(high["psnr"] - low["psnr"], 1e-12)
            return low["bpp"] + t * (high["bpp"] - low["bpp"])
    return None


def load_or_train(model_dirs: list[Path], batches: int) -> list[tuple[str, Any]]:
    import torch

    from fedrs.config import load_config
    from fedrs.pipeline import load_run_data
    from fedrs.train import build_model, train_local

    if model_dirs:
        models = []
        for folder in model_dirs:
            config = load_config(folder / "config.toml")
            model = build_model(config)
            model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
            models.append((folder.name, model.eval()))
        return models
    config = load_config(REPO / "experiments" / "default.toml", {"train.max_batches": batches})
    data = load_run_data(config.data)
    model = build_model(config)
    metrics = train_local(model, data.archive, data.train_rows, config, stage=1, epochs=1)
    print(f"trained the codec here: {batches} batches, loss {metrics['loss']:.2f}", flush=True)
    return [("trained-here", model.eval())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, action="append", default=[])
    parser.add_argument("--train-batches", type=int, default=150)
    parser.add_argument("--synthetic", type=int, default=24, help="synthetic test patches")
    parser.add_argument("--out", type=Path, default=Path("bench-rd.png"))
    args = parser.parse_args()
    import torch

    from fedrs.config import load_config
    from fedrs.data import open_archive, prepare_cache
    from fedrs.pipeline import cache_base, load_run_data, synthetic_name

    torch.set_num_threads(os.cpu_count() or 1)
    models = load_or_train(args.model, args.train_batches)
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        real = open_archive(DATA_ROOT / "v1-sample")
        prepare_cache(real, Path(tmp) / "real")
        data_config = load_config(REPO / "experiments" / "default.toml").data
        synth = load_run_data(data_config)
        source = open_archive(cache_base(data_config) / synthetic_name(data_config))
        sets = {
            "real": (real, open_archive(Path(tmp) / "real"), np.arange(len(real))),
            "synthetic": (source, synth.archive, synth.query_rows),
        }
        for name, (archive, cache, candidates) in sets.items():
            source_row = {pid: i for i, pid in enumerate(archive.metadata["patch_id"])}
            cache_ids = cache.metadata["patch_id"].to_numpy(dtype=object)
            for modality in ("s1", "s2"):
                has = cache.metadata[f"has_{modality}"].to_numpy(dtype=bool)
                rows = candidates[has[candidates]][
                    : args.synthetic if name == "synthetic" else None
                ]
                jp2 = jpeg2000_curve(
                    archive, np.array([source_row[p] for p in cache_ids[rows]]), modality
                )
                entry: dict[str, Any] = {"patches": len(rows), "jpeg2000": jp2, "models": {}}
                for label, model in models:
                    point = model_point(model, cache, rows, modality)
                    point["jpeg2000_psnr_at_same_bpp"] = psnr_at(jp2, point["bpp"])
                    same = bpp_at(jp2, point["psnr"])
                    point["jpeg2000_bpp_at_same_psnr"] = same
                    point["jpeg2000_vs_fedrs_bpp_ratio"] = (
                        None if same is None else same / point["bpp"]
                    )
                    entry["models"][label] = point
                figures[f"{name}/{modality}"] = entry
                print(f"\n{name} {modality.upper()} ({len(rows)} patches)")
                print(f"  {'coder':<22}{'bpp':>10}{'PSNR dB':>10}")
                for p in jp2:
                    label = f"JPEG 2000 q={p['quality']:g}"
                    print(f"  {label:<22}{p['bpp']:>10.3f}{p['psnr']:>10.2f}")
                for label, point in entry["models"].items():
                    print(f"  {'fedrs ' + label:<22}{point['bpp']:>10.3f}{point['psnr']:>10.2f}")
                    ref = point["jpeg2000_psnr_at_same_bpp"]
                    if ref is not None:
                        print(f"  {'  JPEG 2000 same bpp':<22}{point['bpp']:>10.3f}{ref:>10.2f}")
                    same = point["jpeg2000_bpp_at_same_psnr"]
                    if same is not None:
                        print(
                            f"  {'  JPEG 2000 same PSNR':<22}{same:>10.3f}{point['psnr']:>10.2f}"
                            f"   ({same / point['bpp']:.1f}x the bits of fedrs)"
                        )
    plot(figures, args.out)
    print(f"\nplot: {args.out}")
    summary = {
        key: {
            label: {k: (None if v is None else round(v, 4)) for k, v in point.items()}
            for label, point in entry["models"].items()
        }
        for key, entry in figures.items()
    }
    print(json.dumps(summary))


def plot(figures: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(figures), figsize=(4 * len(figures), 3.4))
    for ax, (key, entry) in zip(np.atleast_1d(axes), figures.items(), strict=True):
        jp2 = entry["jpeg2000"]
        ax.plot([p["bpp"] for p in jp2], [p["psnr"] for p in jp2], "o-", label="JPEG 2000")
        for label, point in entry["models"].items():
            ax.plot([point["bpp"]], [point["psnr"]], "r*", markersize=12, label=f"fedrs {label}")
        ax.set(title=key, xlabel="bits per pixel", ylabel="PSNR (dB)", xscale="log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
