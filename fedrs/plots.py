"""The report plots: a federation's rounds (``rounds.png``) and a comparison's runs
(``comparison.png``), drawn with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

matplotlib.use("Agg")


def plot_rounds(history: list[dict[str, Any]], path: Path) -> Path:
    """mAP@20 (both conventions, with their random-code baselines) and bpp per modality a
    round (``history``: ``history.json``'s rows), saved to ``path``."""
    rounds = [h["round"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    axes[0].plot(rounds, [h.get("eval/map@20") for h in history], marker="o", label="model")
    axes[0].plot(rounds, [h.get("eval/map@20_random") for h in history], ls="--", label="random")
    strict = [h.get("eval/map@20_min_k_r") for h in history]
    if any(v is not None for v in strict):  # runs from before the min(k, R) convention lack it
        axes[0].plot(rounds, strict, marker="s", label="model, min(k,R)")
        strict_random = [h.get("eval/map@20_min_k_r_random") for h in history]
        axes[0].plot(rounds, strict_random, ls=":", label="random, min(k,R)")
    axes[0].set(xlabel="round", ylabel="mAP@20", title="retrieval")
    axes[0].legend()
    for modality in ("s1", "s2"):
        values = [h.get(f"eval/bpp_{modality}") for h in history]
        if any(v is not None for v in values):
            axes[1].plot(rounds, values, marker="o", label=modality.upper())
    axes[1].set(xlabel="round", ylabel="bits per pixel", title="compression")
    axes[1].legend()
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_comparison(
    rows: dict[str, dict[str, float | None]],
    path: Path,
    half_widths: dict[str, dict[str, float | None]] | None = None,
) -> Path:
    """Bars of mAP@20 (both conventions, random codes as dashed ticks), bpp and PSNR a run
    (``rows``: run -> title -> figure); with ``half_widths``, their intervals as error bars."""
    names = list(rows)

    def bars(title: str) -> tuple[list[float], list[float] | None]:
        heights = [rows[n].get(title) or 0.0 for n in names]
        if half_widths is None:
            return heights, None
        return heights, [(half_widths.get(n) or {}).get(title) or 0.0 for n in names]

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    panels = (("mAP@20", "map@20"), ("bpp", "bpp"), ("PSNR (dB)", "PSNR"))
    width = 0.4
    for ax, (title, key) in zip(axes, panels, strict=True):
        if key == "map@20":
            # both conventions (retrieved: AP / R_k; min(k,R): AP / min(20, R)), each with its
            # random-code baseline as a black tick on its bar
            for i, (label, suffix) in enumerate((("mAP@20", ""), ("min(k,R)", " min(k,R)"))):
                xs = [j + (i - 0.5) * width for j in range(len(names))]
                heights, errors = bars(f"mAP@20{suffix}")
                ax.bar(xs, heights, width, yerr=errors, capsize=3, label=label)
                random = [rows[n].get(f"random{suffix}") for n in names]
                ax.hlines(
                    [r if r is not None else float("nan") for r in random],
                    [x - width / 2 for x in xs],
                    [x + width / 2 for x in xs],
                    colors="k",
                    linestyles="--",
                    label="random" if i == 0 else None,
                )
        else:
            for i, modality in enumerate(("S1", "S2")):
                xs = [j + (i - 0.5) * width for j in range(len(names))]
                heights, errors = bars(f"{key} {modality}")
                ax.bar(xs, heights, width, yerr=errors, capsize=3, label=modality)
        ax.set_xticks(range(len(names)), names)
        ax.legend()
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
