"""What fedrs prints fits an 80-column terminal: every number whole, no cell cut short (``…``);
plots of rounds have integer ticks."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from fedrs.cli._common import number

LONG: dict[str, Any] = {
    "map@20": 0.897234,
    "map@20_random": 0.123456,
    "map@20_min_k_r": 0.456789,
    "map@20_min_k_r_random": 0.034567,
    "map@10": 0.912345,
    "map@100": 0.801234,
    "bpp": {"s1": 1.234567, "s2": 0.987654},
    "psnr": {"s1": 25.83456, "s2": 31.23456},
    "eval_queries": 1000,
    "eval_database": 20000,
    "rounds": 20,
    "clients_ok": 200,
    "clients_failed": 0,
    "bytes_up": 203456789,
    "bytes_down": 2034567890,
    "wall_s": 1234.56,
}


def render(renderable: Any) -> str:
    console = Console(width=80, record=True, file=io.StringIO())
    console.print(renderable)
    text = console.export_text()
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 80
    return text


def test_number_keeps_cells_short() -> None:
    assert [number(v) for v in (0.897234, 25.83456, 203.456789, 1234.56, 12345.6)] == [
        "0.897",
        "25.83",
        "203.5",
        "1235",
        "12346",
    ]
    assert (number(None), number(203456789), number(0.0), number(-1.23456)) == (
        "-",
        "203456789",
        "0.000",
        "-1.235",
    )


def test_comparison_table_shows_every_value_whole_at_80_columns() -> None:
    from fedrs.cli.compare import comparison_table

    centralized = {k: v for k, v in LONG.items() if k != "bytes_up"}
    rows = {"centralized": centralized, "modality-aware": LONG, "fedprox": LONG}
    text = render(comparison_table(rows, "fedrs compare: smoke (modality partition)"))
    lines = text.splitlines()
    # mAP@20, random, mAP@20 min(k,R), random min(k,R), bpp S1, bpp S2, PSNR S1, PSNR S2,
    # MB up, wall s
    figures = [
        "0.897",
        "0.123",
        "0.457",
        "0.035",
        "1.235",
        "0.988",
        "25.83",
        "31.23",
        "203.5",
        "1235",
    ]
    for name in rows:
        (line,) = [line for line in lines if line.startswith(name)]
        cells = line.split()
        assert cells[0] == name
        assert cells[1:] == ([*figures[:8], "-", "1235"] if name == "centralized" else figures)
    # both conventions are named in the headers and explained in the caption
    assert "mAP@20" in text and text.count("(k,R)") >= 2
    assert "min(20, R)" in " ".join(text.split())
    # an older summary without the min(k, R) figures shows "-" there
    old = {k: v for k, v in LONG.items() if "min_k_r" not in k}
    (line,) = [
        line
        for line in render(comparison_table({"old": old}, "c")).splitlines()
        if line.startswith("old")
    ]
    assert line.split()[1:] == [*figures[:2], "-", "-", *figures[4:]]


def test_comparison_json_names_both_conventions() -> None:
    from fedrs.cli.compare import COLUMNS, _metric_name, _value

    titles = [title for title, _ in COLUMNS]
    assert len(set(titles)) == len(titles)  # comparison.json keys
    figures = {title: _value(LONG, key) for title, key in COLUMNS}
    assert figures["mAP@20"] == LONG["map@20"] and figures["random"] == LONG["map@20_random"]
    assert figures["mAP@20 min(k,R)"] == LONG["map@20_min_k_r"]
    assert figures["random min(k,R)"] == LONG["map@20_min_k_r_random"]
    # MLflow names: letters, digits, _ - . / and @ (the tracker maps @ to _at_)
    assert _metric_name("mAP@20 min(k,R)") == "mAP@20_min_k_R"
    assert _metric_name("bpp S1") == "bpp_S1"


def test_comparison_table_folds_a_long_run_name_rather_than_cut_numbers() -> None:
    from fedrs.cli.compare import comparison_table

    name = "a-strategy-with-a-rather-long-registered-name"
    text = render(comparison_table({name: LONG}, "compare"))
    # title, three header lines, the rule, then the row (its name folded), then the caption
    lines = text.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.startswith("─"))
    caption = next(i for i, line in enumerate(lines) if line.startswith("mAP@20:"))
    assert "".join(line.split()[0] for line in lines[rule + 1 : caption] if line.strip()) == name
    assert "0.897" in text.split() and "203.5" in text.split()


def test_print_summary_shows_every_value_whole_at_80_columns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import fedrs.cli.simulate as simulate

    console = Console(width=80, record=True, file=io.StringIO())
    monkeypatch.setattr(simulate, "console", console)
    simulate.print_summary(LONG, "fedrs simulate: /a/rather/long/output/folder/runs/demo-2024")
    text = console.export_text()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    cells = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.split("│")]
        if len(parts) == 4:
            cells[parts[1]] = parts[2]
    assert cells == {
        "map@20": "0.897",
        "map@20_random": "0.123",
        "map@20_min_k_r": "0.457",
        "map@20_min_k_r_random": "0.035",
        "map@10": "0.912",
        "map@100": "0.801",
        "bpp S1": "1.235",
        "bpp S2": "0.988",
        "psnr S1": "25.83",
        "psnr S2": "31.23",
        "eval_queries": "1000",
        "eval_database": "20000",
        "rounds": "20",
        "clients_ok": "200",
        "clients_failed": "0",
        "bytes_up": "203456789",
        "bytes_down": "2034567890",
        "wall_s": "1235",
    }


def test_search_hits_show_long_patch_ids_whole_at_80_columns() -> None:
    from fedrs.cli.search import hits_table

    ids = [f"S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_{i}_57" for i in (26, 27, 100)]
    labels = [
        "Land principally occupied by agriculture, with significant areas of natural vegetation",
        "Mixed [forest]",
    ]
    hits = [
        {"rank": r, "patch_id": p, "archive": "portugal-2018", "distance": 10 + r, "labels": labels}
        for r, p in enumerate(ids, start=1)
    ]
    text = render(hits_table("top 3", hits))
    lines = [line.split() for line in text.splitlines()]
    for rank, patch in enumerate(ids, start=1):
        assert [str(rank), patch, str(10 + rank)] in lines
    assert text.count("in portugal-2018:") == 3 and text.count("Mixed [forest]") == 3
    # piped: one line a hit, labels in their own column
    wide = Console(width=200, record=True, file=io.StringIO())
    wide.print(hits_table("top 3", hits, one_line=True))
    assert "distance" in wide.export_text() and "…" not in wide.export_text()


def test_partitions_table_fits_80_columns(
    monkeypatch: pytest.MonkeyPatch, v2_metadata: Path
) -> None:
    import fedrs.cli.partitions as partitions

    console = Console(width=80, record=True, file=io.StringIO())
    monkeypatch.setattr(partitions, "console", console)
    partitions.main(v2_metadata, 10, "country", 0, None, None, None, 3)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    counts = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if cells and cells[0].isdigit():
            counts[int(cells[0])] = int(cells[1].replace(",", ""))
    assert sorted(counts) == list(range(10))
    assert f"10 clients, {sum(counts.values()):,} of " in text


def test_rounds_plot_has_integer_ticks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib.pyplot as plt

    from fedrs.server.app import _plot_history

    figures: list[Any] = []
    monkeypatch.setattr(plt, "close", figures.append)
    history = [
        {
            "round": r,
            "eval/map@20": 0.1 * r,
            "eval/map@20_random": 0.05,
            "eval/map@20_min_k_r": 0.05 * r,
            "eval/map@20_min_k_r_random": 0.02,
            "eval/bpp_s1": 1.0 / r,
        }
        for r in (1, 2, 3)
    ]
    _plot_history(history, tmp_path / "rounds.png")
    (fig,) = figures
    for ax in fig.axes:
        ticks = ax.get_xticks()
        assert len(ticks) > 0 and all(float(t).is_integer() for t in ticks), ticks
    plt.close("all")
