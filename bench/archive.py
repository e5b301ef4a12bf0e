"""Compressed archives: hash from bitstreams, archive size, federated search, side by side.

One run, one model, the same patches for every comparison:

1. **Hash from bits vs decode-then-hash.** An archive is compressed with
   ``fedrs.compression.compress_archive``; its records' streams are then hashed two ways, in
   batches, interleaved (best of ``--repeat``): (a) ``JointModel.hash_from_bitstreams``: entropy
   decoding of the latents, then the hash head; (b) what a codec without hash-from-bits must do:
   decode the image (``JointModel.decompress``: entropy decoding + synthesis), re-encode it with
   the model's encoder (analysis, hyper-analysis, hyper-synthesis, quantisation) and hash.
   Both run ``h_s`` and the hash head in fixed-size pieces, as the model does at evaluation (so
   that codes do not depend on the batch).  Reported in patches/s and as a ratio; with a
   breakdown of (a): entropy decoding of z, the hyper-synthesis ``h_s``, entropy decoding of y
   and the hash head.
2. **Size.** The ``.fedrs`` file against the source GeoTIFFs of the same patches (sum of file
   sizes), and against JPEG 2000 (GDAL's JP2OpenJPEG through rasterio, one file per band at its
   native resolution, S1 dB mapped linearly from [-50, 10] dB to uint16 as in bench/rd.py) at the
   same PSNR: the JPEG 2000 ``QUALITY`` is bisected per modality until its PSNR matches the
   model's on the same patches.  PSNR as in ``fedrs.train``: 10 log10(peak^2 / MSE), MSE over all
   values of all patches (120 x 120, bands upsampled as the reader does), peak 10000 for S2
   digital numbers and 60 dB for S1.
3. **Search.** Federated vs central search with the logic of bench/search.py (random 64-bit
   codes split into 10 archives; 59,033 codes by default, BigEarthNet's 590,326 with ``--full``),
   and, on the real codes, federated search over three ``.fedrs`` files (the archive's records
   split in three) against one central index: identical results required.

With no ``--model``, the default architecture (experiments/default.toml) is trained here for a
few batches on a separate synthetic archive (``--train-batches`` stage-1 batches and a quarter
as many stage-2 batches: about a minute on 2 cores); such a model is far from converged, so its
rate and PSNR are those of an early model.  Give ``--model RUN`` (a run folder of ``fedrs
centralized`` / ``fedrs simulate``) for a trained one.  The last line printed is one JSON object.

    python bench/archive.py [--model RUN] [--patches 96] [--train-batches 40] [--full]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PEAK = {"s2": 10000.0, "s1": 60.0}
S1_RANGE = (-50.0, 10.0)
QUALITY_RANGE = (0.02, 60.0)


def _bench_module(name: str) -> ModuleType:
    """Import a sibling benchmark script (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", Path(__file__).with_name(name))
    if spec is None or spec.loader is None:
        raise ImportError(name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------------
# Model


def train_here(batches: int, threads: int, tmp: Path) -> Any:
    """The default architecture trained briefly on its own synthetic archive."""
    from fedrs.compression import as_trained_model
    from fedrs.config import load_config
    from fedrs.data import open_archive, prepare_cache
    from fedrs.data.synth import write_synthetic_archive
    from fedrs.train import build_model, train_local

    config = load_config(REPO / "experiments" / "default.toml", {"train.threads": threads})
    source = tmp / "train-synthetic"
    write_synthetic_archive(source, patches=192, seed=101, s1_only_fraction=0.1)
    cache: Any = open_archive(prepare_cache(open_archive(source), tmp / "train-cache"))
    rows = np.arange(len(cache))
    per_epoch = math.ceil(len(rows) / config.train.batch_size)
    model = build_model(config)
    started = time.perf_counter()
    for stage, count in ((1, batches), (2, max(1, batches // 4))):
        epochs = math.ceil(count / per_epoch)
        cap = math.ceil(count / epochs)
        capped = config.model_copy(
            update={"train": config.train.model_copy(update={"max_batches": cap})}
        )
        metrics = train_local(model, cache, rows, capped, stage=stage, epochs=epochs, seed=stage)
        print(
            f"trained here: stage {stage}, {int(metrics['batches'])} batches, "
            f"loss {metrics['loss']:.3f}",
            flush=True,
        )
    print(f"training took {time.perf_counter() - started:.0f} s", flush=True)
    return as_trained_model(model.eval())


# ------------------------------------------------------------------------------------------------
# 1. Hash from bits vs decode-then-hash


def hash_from_images(model: Any, x_hat: dict[str, Any], masks: dict[str, Any]) -> Any:
    """Codes of decoded images: re-encode with the model's encoder, quantise, hash."""
    import torch

    y_hat = {}
    for modality, x in x_hat.items():
        codec = model.codec(modality)
        y = codec.analysis(x)
        z = codec.h_a(y)
        eb = codec.entropy_bottleneck
        z_hat = eb.quantize(z, "dequantize", eb.medians(z.dim()))
        params = codec.entropy_parameters(z_hat, invariant=True)
        latent = codec.conditional.quantize(y, "dequantize", codec.conditional.means(params))
        count = len(masks[modality])
        full = latent.new_zeros(count, *latent.shape[1:])
        full[torch.nonzero(masks[modality]).flatten()] = latent
        y_hat[modality] = full
    return model.hash_head(y_hat, masks)["codes"]


def decode_then_hash(model: Any, batch: dict[str, list[Any]]) -> Any:
    import torch

    x_hat, masks = {}, {}
    for modality, patches in batch.items():
        present = [p for p in patches if p is not None]
        if not present:
            continue
        x_hat[modality] = model.decompress({modality: present})["x_hat"][modality]
        masks[modality] = torch.tensor([p is not None for p in patches])
    return hash_from_images(model, x_hat, masks)


def hash_breakdown(model: Any, batches: list[dict[str, list[Any]]]) -> dict[str, float]:
    """Seconds spent in each step of hash-from-bits over all batches (one pass each)."""
    import torch

    times = dict.fromkeys(("z_decode", "h_s", "y_decode", "head"), 0.0)
    for batch in batches:
        y_hat, masks = {}, {}
        for modality, patches in batch.items():
            present = [p for p in patches if p is not None]
            if not present:
                continue
            codec = model.codec(modality)
            t = time.perf_counter()
            z_hat = codec.entropy_bottleneck.decompress([p.z for p in present], present[0].z_shape)
            times["z_decode"] += time.perf_counter() - t
            t = time.perf_counter()
            params = codec.entropy_parameters(z_hat, invariant=True)
            times["h_s"] += time.perf_counter() - t
            t = time.perf_counter()
            latent = codec.conditional.decompress([p.y for p in present], params)
            times["y_decode"] += time.perf_counter() - t
            mask = torch.tensor([p is not None for p in patches])
            full = latent.new_zeros(len(patches), *latent.shape[1:])
            full[torch.nonzero(mask).flatten()] = latent
            y_hat[modality], masks[modality] = full, mask
        t = time.perf_counter()
        model.hash_head(y_hat, masks)
        times["head"] += time.perf_counter() - t
    return {k: round(v, 4) for k, v in times.items()}


def hashing_figures(trained: Any, archive: Any, batch_size: int, repeat: int) -> dict[str, Any]:
    import torch

    from fedrs.compression import record_patches

    model = trained.model
    records = [record_patches(archive, r) for r in archive]
    batches = []
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        batches.append({m: [r.get(m) for r in chunk] for m in model.modalities})
    batches = [{m: v for m, v in b.items() if any(p is not None for p in v)} for b in batches]
    n = len(records)
    with torch.no_grad():
        times, results = _bench_module("search.py").interleaved(
            {
                "bits": lambda: torch.cat([model.hash_from_bitstreams(b) for b in batches]),
                "decode": lambda: torch.cat([decode_then_hash(model, b) for b in batches]),
            },
            repeat,
        )
        breakdown = hash_breakdown(model, batches)
    stored = np.unpackbits(archive.codes, axis=1).astype(bool)
    bits = results["bits"].numpy() > 0
    decoded = results["decode"].numpy() > 0
    return {
        "patches": n,
        "batch_size": batch_size,
        "hash_from_bits_patches_per_s": round(n / times["bits"], 1),
        "decode_then_hash_patches_per_s": round(n / times["decode"], 1),
        "hash_from_bits_ratio": round(times["decode"] / times["bits"], 2),
        "hash_from_bits_equals_stored_codes": bool(np.array_equal(bits, stored)),
        "decode_then_hash_bit_agreement": round(float((bits == decoded).mean()), 4),
        "hash_from_bits_breakdown_s": breakdown,
        "hash_from_bits_total_s": round(times["bits"], 4),
    }


# ------------------------------------------------------------------------------------------------
# 2. Size: GeoTIFF and JPEG 2000 at the same PSNR


class Jpeg2000:
    """JPEG 2000 of some patches of one modality, per band at native resolution (one file a
    band, through bench/rd.py's round trip)."""

    def __init__(self, source: Any, rows: list[int], modality: str) -> None:
        self.jp2_roundtrip = _bench_module("rd.py").jp2_roundtrip
        self.modality = modality
        self.native = []  # per patch: list of (uint16 band, resolution group, position)
        self.items = []
        for row in rows:
            self.items.append(source[row][modality].numpy().astype(np.float64))
            if modality == "s2":
                self.native.append(
                    {res: np.asarray(b, np.uint16) for res, b in source.read_s2_native(row).items()}
                )
            else:
                lo, hi = S1_RANGE
                scaled = np.clip((source.read_s1(row) - lo) / (hi - lo), 0, 1) * 65535
                self.native.append({0: np.rint(scaled).astype(np.uint16)})
        self.resample = source.resample

    def run(self, quality: float, codec: str = "JP2") -> tuple[float, int]:
        """(PSNR over all patches, total bytes) at ``quality``."""
        from fedrs.data.geotiff import upsample_s2

        sq, values, total = 0.0, 0, 0
        for groups, item in zip(self.native, self.items, strict=True):
            decoded = {}
            for res, bands in groups.items():
                out = np.empty_like(bands)
                for b in range(bands.shape[0]):
                    band, size = self.jp2_roundtrip(bands[b : b + 1], quality, codec)
                    out[b] = band[0]
                    total += size
                decoded[res] = out
            if self.modality == "s2":
                image = upsample_s2(decoded, self.resample).numpy().astype(np.float64)
            else:
                lo, hi = S1_RANGE
                image = decoded[0].astype(np.float64) / 65535 * (hi - lo) + lo
            sq += float(((image - item) ** 2).sum())
            values += item.size
        mse = sq / values
        return 10 * math.log10(PEAK[self.modality] ** 2 / max(mse, 1e-12)), total

    def match(self, psnr: float, iterations: int = 12) -> dict[str, Any]:
        """JPEG 2000 bytes at PSNR ``psnr``.

        ``QUALITY`` is bisected on a log scale until a setting lands within 0.05 dB of ``psnr``;
        if none does (the PSNR of a few small bands moves in steps), the bytes are interpolated
        linearly in PSNR between the closest settings below and above.
        """
        lo, hi = (math.log(q) for q in QUALITY_RANGE)
        points = [(math.exp(q), *self.run(math.exp(q))) for q in (lo, hi)]  # quality, psnr, bytes
        if not points[0][1] <= psnr <= points[1][1]:
            return {
                "matched": False,
                "psnr_range": [round(points[0][1], 2), round(points[1][1], 2)],
            }
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            points.append((math.exp(mid), *self.run(math.exp(mid))))
            p = points[-1][1]
            if abs(p - psnr) < 0.05:
                break
            lo, hi = (mid, hi) if p < psnr else (lo, mid)
        nearest = min(points, key=lambda t: abs(t[1] - psnr))
        if abs(nearest[1] - psnr) < 0.05:
            quality, achieved, size = nearest
            interpolated = False
        else:
            below = max((t for t in points if t[1] <= psnr), key=lambda t: t[1])
            above = min((t for t in points if t[1] >= psnr), key=lambda t: t[1])
            w = (psnr - below[1]) / max(above[1] - below[1], 1e-12)
            quality, achieved = nearest[0], psnr
            size = round(below[2] + w * (above[2] - below[2]))
            interpolated = True
        _, codestream = self.run(nearest[0], codec="J2K")
        return {
            "matched": True,
            "interpolated": interpolated,
            "quality": round(quality, 4),
            "psnr": round(achieved, 2),
            "bytes": int(size),
            "codestream_share": round(codestream / nearest[2], 4),
        }


def size_figures(
    trained: Any, source: Any, archive: Any, path: Path, jp2_patches: int
) -> dict[str, Any]:
    import torch

    from fedrs.compression import record_patches
    from fedrs.compression.patch_files import LAYOUT_FOLDERS
    from fedrs.data.transforms import denormalize

    model = trained.model
    meta = source.metadata
    row_of = {pid: i for i, pid in enumerate(meta["patch_id"])}
    if source.layout not in LAYOUT_FOLDERS:
        raise SystemExit(f"{source.root}: --data must be a v1 or v2 archive (GeoTIFFs)")
    folders = LAYOUT_FOLDERS[source.layout]
    geotiff = 0
    for pid in archive.patch_ids:
        row = meta.loc[row_of[pid]]
        for modality, (folder, name) in folders(Path(source.root), pid, row["s1_name"]).items():
            if row[f"has_{modality}"]:
                geotiff += sum(f.stat().st_size for f in folder.glob(f"{name}_*.tif"))
    figures: dict[str, Any] = {
        "fedrs_bytes": path.stat().st_size,
        "geotiff_bytes": geotiff,
        "archive_vs_geotiff_size_ratio": round(path.stat().st_size / geotiff, 5),
        "jpeg2000": {},
    }
    # The JPEG 2000 subset: the first patches; fedrs counted as their whole records.
    subset = list(archive.patch_ids[:jp2_patches])
    sizes = archive.record_sizes()
    fedrs_subset = int(sum(sizes[archive.position(p)] for p in subset))
    jp2_total, matched = 0, True
    for modality in model.modalities:
        held = [p for p in subset if modality in archive.record(p).streams]
        if not held:
            continue
        sq, values, stream_bytes = 0.0, 0, 0
        with torch.no_grad():
            for start in range(0, len(held), 16):
                chunk = held[start : start + 16]
                patches = [record_patches(archive, archive.record(p))[modality] for p in chunk]
                stream_bytes += sum(p.num_bytes for p in patches)
                x_hat = model.decompress({modality: patches})["x_hat"][modality]
                physical = denormalize(x_hat, modality).numpy().astype(np.float64)
                items = np.stack([source[row_of[p]][modality].numpy() for p in chunk])
                sq += float(((physical - items) ** 2).sum())
                values += items.size
        psnr = 10 * math.log10(PEAK[modality] ** 2 / max(sq / values, 1e-12))
        jp2 = Jpeg2000(source, [row_of[p] for p in held], modality).match(psnr)
        pixels = len(held) * 120 * 120
        entry: dict[str, Any] = {
            "patches": len(held),
            "fedrs_psnr": round(psnr, 2),
            "fedrs_bpp": round(8 * stream_bytes / pixels, 4),
            "jpeg2000": jp2,
        }
        if jp2["matched"]:
            entry["jpeg2000_bpp"] = round(8 * jp2["bytes"] / pixels, 4)
            entry["fedrs_vs_jpeg2000_stream_ratio"] = round(stream_bytes / jp2["bytes"], 4)
            jp2_total += jp2["bytes"]
        else:
            matched = False
        figures["jpeg2000"][modality] = entry
    figures["jpeg2000_subset_patches"] = len(subset)
    figures["fedrs_subset_record_bytes"] = fedrs_subset
    figures["jpeg2000_subset_bytes"] = jp2_total if matched else None
    figures["archive_vs_jpeg2000_size_ratio"] = (
        round(fedrs_subset / jp2_total, 4) if matched and jp2_total else None
    )
    return figures


# ------------------------------------------------------------------------------------------------
# 3. Search


def search_figures(archive: Any, tmp: Path, full: bool, repeat: int) -> dict[str, Any]:
    from fedrs.container import ArchiveWriter, CompressedArchive
    from fedrs.retrieval import (
        ArchiveSearch,
        CentralIndex,
        IndexParticipant,
        central_search,
        federated_search,
        set_faiss_threads,
    )

    search = _bench_module("search.py")
    set_faiss_threads(2)
    n_codes, n_queries, k = (590_326, 1_000, 100) if full else (59_033, 200, 100)
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (n_codes, 8), dtype=np.uint8)
    queries = rng.integers(0, 256, (n_queries, 8), dtype=np.uint8)
    parts = np.array_split(codes, 10)
    participants = [IndexParticipant(f"archive-{a}", p, bits=64) for a, p in enumerate(parts)]
    central = CentralIndex(participants)
    counting_parts = [search.CountingParticipant(f"archive-{a}", p) for a, p in enumerate(parts)]
    counting_whole = [search.CountingParticipant("all", codes)]
    times, results = search.interleaved(
        {
            "central": lambda: central.search(queries, k),
            "federated": lambda: federated_search(participants, queries, k),
            "counting_central": lambda: federated_search(counting_whole, queries, k),
            "counting_federated": lambda: federated_search(counting_parts, queries, k),
        },
        repeat,
    )
    # The real codes: the archive's records written into three .fedrs files.
    paths = [tmp / f"part-{i}.fedrs" for i in range(3)]
    bounds = np.linspace(0, len(archive), 4).astype(int)
    for i, path in enumerate(paths):
        with ArchiveWriter(
            path,
            hash_bits=archive.hash_bits,
            model_fingerprint=archive.model_fingerprint,
            meta=archive.meta,
        ) as writer:
            for position in range(bounds[i], bounds[i + 1]):
                writer.add(archive.record(int(position)))
    parts_open = [CompressedArchive.open(p) for p in paths]
    searches = [ArchiveSearch(part) for part in parts_open]
    k_real = min(10, len(archive))
    fed = federated_search(searches, archive.codes, k_real)
    cen = central_search(searches, archive.codes, k_real)
    for part in parts_open:
        part.close()
    return {
        "search_codes": n_codes,
        "search_queries": n_queries,
        "search_k": k,
        "search_archives": 10,
        "central_qps": round(n_queries / times["central"], 1),
        "federated_qps": round(n_queries / times["federated"], 1),
        "federated_vs_central_search_ratio": round(times["federated"] / times["central"], 3),
        "identical_federated_central": bool(results["federated"] == results["central"]),
        "counting_federated_vs_central_ratio": round(
            times["counting_federated"] / times["counting_central"], 3
        ),
        "identical_counting": bool(
            np.array_equal(results["counting_federated"].distances, results["central"].distances)
            and np.array_equal(
                results["counting_federated"].global_positions, results["central"].global_positions
            )
        ),
        "fedrs_files_federated_equals_central": bool(fed == cen),
    }


# ------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="run folder (model.pt + config.toml)")
    parser.add_argument("--data", type=Path, help="archive to compress (default: synthetic)")
    parser.add_argument("--patches", type=int, default=96, help="synthetic patches")
    parser.add_argument("--train-batches", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--jp2-patches", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--full", action="store_true", help="search over 590,326 codes")
    args = parser.parse_args()
    import torch

    from fedrs.compression import compress_archive, load_trained_model
    from fedrs.container import CompressedArchive
    from fedrs.data import open_archive
    from fedrs.data.synth import write_synthetic_archive

    torch.set_num_threads(args.threads)
    figures: dict[str, Any] = {"threads": args.threads}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.model is not None:
            trained = load_trained_model(args.model)
            figures["model"] = str(args.model)
        else:
            trained = train_here(args.train_batches, args.threads, tmp)
            figures["model"] = f"default architecture, {args.train_batches} batches here"
        torch.set_num_threads(args.threads)
        if args.data is not None:
            root = args.data
        else:
            root = tmp / "synthetic"
            write_synthetic_archive(
                root, patches=args.patches, seed=7, s1_only_fraction=0.1, s2_only_fraction=0.1
            )
        source = open_archive(root, modalities=trained.modalities)
        path = tmp / "archive.fedrs"
        report = compress_archive(source, trained, path, batch_size=args.batch_size)
        figures["compress_patches_per_s"] = round(report.records / report.seconds, 1)
        with CompressedArchive.open(path) as archive:
            print(
                f"compressed {report.records} patches into {report.file_bytes} bytes "
                f"({figures['compress_patches_per_s']} patches/s)",
                flush=True,
            )
            figures |= hashing_figures(trained, archive, args.batch_size, args.repeat)
            b = figures["hash_from_bits_breakdown_s"]
            print(
                f"hash from bits   {figures['hash_from_bits_patches_per_s']:>9} patches/s\n"
                f"decode then hash {figures['decode_then_hash_patches_per_s']:>9} patches/s   "
                f"hash from bits {figures['hash_from_bits_ratio']}x faster "
                f"(codes agree on {100 * figures['decode_then_hash_bit_agreement']:.1f} % "
                "of bits)\n"
                f"  hash from bits, s: z decode {b['z_decode']}, h_s {b['h_s']}, "
                f"y decode {b['y_decode']}, hash head {b['head']}",
                flush=True,
            )
            figures |= size_figures(trained, source, archive, path, args.jp2_patches)
            print(
                f".fedrs {figures['fedrs_bytes']} bytes vs GeoTIFF {figures['geotiff_bytes']} "
                f"bytes: {figures['archive_vs_geotiff_size_ratio']}",
                flush=True,
            )
            for modality, entry in figures["jpeg2000"].items():
                jp2 = entry["jpeg2000"]
                same = (
                    f"JPEG 2000 at {jp2['psnr']} dB: {entry['jpeg2000_bpp']} bpp "
                    f"(fedrs/JPEG 2000 = {entry['fedrs_vs_jpeg2000_stream_ratio']})"
                    if jp2["matched"]
                    else f"JPEG 2000 PSNR range {jp2['psnr_range']} does not reach it"
                )
                print(
                    f"{modality}: fedrs {entry['fedrs_bpp']} bpp at {entry['fedrs_psnr']} dB; "
                    + same,
                    flush=True,
                )
            figures |= search_figures(archive, tmp, args.full, args.repeat)
        print(
            f"search over {figures['search_codes']} codes: federated "
            f"{figures['federated_qps']} q/s, central {figures['central_qps']} q/s, ratio "
            f"{figures['federated_vs_central_search_ratio']}, identical "
            f"{figures['identical_federated_central']} (faiss counting selection: ratio "
            f"{figures['counting_federated_vs_central_ratio']}); three .fedrs files federated = "
            "central: "
            f"{figures['fedrs_files_federated_equals_central']}",
            flush=True,
        )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
