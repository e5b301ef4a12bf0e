"""What fedrs prints fits an 80-column terminal: every number whole, no cell cut short (``…``);
plots of rounds have integer ticks."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from _data import SMOKE
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


INTERVALS: dict[str, Any] = {
    "map@20_ci_low": 0.875,
    "map@20_ci_high": 0.918,
    "map@20_min_k_r_ci_low": 0.431,
    "map@20_min_k_r_ci_high": 0.481,
}
"""95 % bootstrap intervals over the queries of LONG's two mAP@20 figures."""


def test_comparison_table_shows_the_query_intervals_beside_the_maps() -> None:
    from fedrs.cli.compare import QUERY_ROW, comparison_table, figures

    rows = {"centralized": LONG | INTERVALS, "old": LONG}
    text = render(comparison_table(rows, "fedrs compare: smoke (modality partition)"))
    lines = text.splitlines()
    (central,) = [i for i, line in enumerate(lines) if line.startswith("centralized")]
    # under the run's figures: the half widths, in the mAP@20 and mAP@20 min(k,R) columns
    below = lines[central + 1]
    assert below.split() == [QUERY_ROW, "0.022", "0.025"]
    header = next(line for line in lines if line.lstrip().startswith("run"))
    columns = header.split()
    ends = {name: header.index(name) + len(name) for name in ("mAP@20", "random")}
    assert below.index("0.022") + len("0.022") == ends["mAP@20"]  # right-aligned under mAP@20
    assert columns[:3] == ["run", "mAP@20", "random"]
    # a summary without intervals gets no such row, and the caption says what the row is
    assert sum(line.startswith(QUERY_ROW) for line in lines) == 1
    assert "bootstrap interval over the queries" in " ".join(text.split())
    # comparison.json keeps the bounds themselves
    row = figures(LONG | INTERVALS)
    assert (row["mAP@20 low"], row["mAP@20 high"]) == (0.875, 0.918)
    assert (row["mAP@20 min(k,R) low"], row["mAP@20 min(k,R) high"]) == (0.431, 0.481)
    assert figures(LONG)["mAP@20 low"] is None


def test_comparison_over_seeds_shows_the_mean_query_intervals() -> None:
    from fedrs.cli.compare import QUERY_ROW, SPREAD_ROW, figures, figures_table, intervals

    wider = LONG | INTERVALS | {"map@20_ci_low": 0.85, "map@20_ci_high": 0.963}
    means, half = intervals([figures(LONG | INTERVALS), figures(wider)])
    assert (means["mAP@20 low"], means["mAP@20 high"]) == pytest.approx((0.8625, 0.9405))
    text = render(figures_table({"fedavg": means}, "mean over 2 seeds", {"fedavg": half}))
    lines = text.splitlines()
    (fedavg,) = [i for i, line in enumerate(lines) if line.startswith("fedavg")]
    # the seeds' mean half width over the queries (0.0215 and 0.0565), then the seeds' spread
    assert lines[fedavg + 1].split() == [QUERY_ROW, "0.039", "0.025"]
    assert lines[fedavg + 2].split()[0] == SPREAD_ROW


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


def test_print_summary_shows_the_query_intervals_and_encoding_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import fedrs.cli.simulate as simulate

    console = Console(width=80, record=True, file=io.StringIO())
    monkeypatch.setattr(simulate, "console", console)
    simulate.print_summary(LONG | INTERVALS | {"encode_s_per_10k": 523.456}, "fedrs simulate")
    text = console.export_text()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    rows = [[p.strip() for p in line.split("│")][1:3] for line in text.splitlines()]
    names = [row[0] for row in rows if row]
    # each interval right under its figure
    assert names[:4] == ["map@20", "map@20 95% over queries", "map@20_random", "map@20_min_k_r"]
    cells = dict(row for row in rows if len(row) == 2)
    assert cells["map@20 95% over queries"] == "[0.875, 0.918]"
    assert cells["map@20_min_k_r 95% over queries"] == "[0.431, 0.481]"
    assert cells["encode_s_per_10k"] == "523.5"


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

    from fedrs.plots import plot_rounds

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
    plot_rounds(history, tmp_path / "rounds.png")
    (fig,) = figures
    for ax in fig.axes:
        ticks = ax.get_xticks()
        assert len(ticks) > 0 and all(float(t).is_integer() for t in ticks), ticks
    plt.close("all")


def test_comparison_over_seeds_shows_half_widths_under_the_means_at_80_columns() -> None:
    from fedrs.cli.compare import SPREAD_ROW, figures, figures_table, intervals

    long = "a-strategy-with-a-rather-long-registered-name"
    other = LONG | {"map@20": 0.917234, "wall_s": 1434.56}
    means, half = intervals([figures(LONG), figures(other)])
    # two seeds: t_{0.975,1} = 12.706 times the standard error (0.01 for mAP@20, 100 for wall s)
    assert means["mAP@20"] == pytest.approx(0.907234)
    assert half["mAP@20"] == pytest.approx(0.127062, abs=1e-6)
    assert half["wall s"] == pytest.approx(1270.62, abs=0.01)
    assert half["random"] == 0.0
    rows = {"centralized": means, "fedavg": means, long: means}
    text = render(
        figures_table(rows, "fedrs compare: smoke, mean over 2 seeds", {n: half for n in rows})
    )
    lines = text.splitlines()
    (fedavg,) = [i for i, line in enumerate(lines) if line.startswith("fedavg")]
    assert lines[fedavg].split()[1:3] == ["0.907", "0.123"]
    assert lines[fedavg + 1].split()[:3] == [SPREAD_ROW, "0.127", "0.000"]
    assert (lines[fedavg].split()[-1], lines[fedavg + 1].split()[-1]) == ("1335", "1271")
    assert sum(line.startswith(SPREAD_ROW) for line in lines) == 3
    # one seed reports no spread
    _, none = intervals([figures(LONG)])
    assert set(none.values()) == {None}


def test_targets_table_fits_80_columns() -> None:
    from test_convergence import central_summary, federation_summary

    from fedrs.cli.compare import TARGET_TITLES, mean_targets, targets_table
    from fedrs.convergence import targets

    found = [
        targets(central_summary(), federation_summary(maps=m))
        for m in ((0.70, 0.77, 0.79), (0.70, 0.77, 0.81), (0.70, 0.70, 0.70))
    ]
    mean = mean_targets(found)
    assert mean["map@20 95%"] == {
        "seeds": 3,
        "reached": 2,
        "round": 2.0,
        "passes": 4.0,
        "bytes": 60e6,
    }
    assert mean["map@20 99%"]["reached"] == 1 and mean["map@20 99%"]["round"] == 3.0
    long = "a-strategy-with-a-rather-long-registered-name"
    text = render(targets_table({"fedavg": mean, long: mean_targets(found[:2])}, "targets"))
    cells = [line.split() for line in text.splitlines()]
    assert ["fedavg", "mAP@20", "95%", "2", "4", "60.00", "2/3"] in cells
    assert ["mAP@20", "99%", "3", "6", "90.00", "1/3"] in cells
    assert ["min(k,R)", "99%", "3", "6", "90.00", "2/2"] in cells
    assert all(title.split()[0] in text for title in TARGET_TITLES.values())
    # one seed: whole rounds, no seeds column
    one = render(targets_table({"fedavg": mean_targets(found[2:])}, "targets"))
    assert ["fedavg", "mAP@20", "95%", "-", "-", "-"] in [line.split() for line in one.splitlines()]
    assert "seeds" not in one.split()


def _write_seed(out: Path, seed: int) -> dict[str, dict[str, Any]]:
    """Handmade summaries of one seed: fedavg's last mAP@20 is 0.79 + 0.02 x seed."""
    import json

    from test_convergence import MB, central_summary, federation_summary

    runs = {
        "centralized": central_summary(wall_s=100.0 + 20 * seed),
        "fedavg": federation_summary(maps=(0.70, 0.77, 0.79 + 0.02 * seed)),
        "modality-aware": federation_summary(maps=(0.72, 0.78, 0.80), bytes_up=6 * MB),
    }
    for name, summary in runs.items():
        (out / name).mkdir(parents=True)
        (out / name / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return runs


def _row(lines: list[list[str]], name: str) -> int:
    """The index of the table line of run ``name`` (its cells split)."""
    return next(i for i, cells in enumerate(lines) if cells[:1] == [name])


def test_compare_over_seeds_runs_each_seed_in_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache_env: Path
) -> None:
    """``--seeds 0,1``: seed 0 read from ``seed-0/<run>``, seed 1 run (stand-ins here) with
    the seed and partition seed set, in ``seed-1/<run>``; means, 95% half widths and targets in
    the tables and ``comparison.json``."""
    import json

    import fedrs.centralized
    import fedrs.cli.compare as compare
    import fedrs.server.simulation
    from fedrs.cli import main as cli

    out = tmp_path / "compare"
    _write_seed(out / "seed-0", 0)
    seed1 = _write_seed(tmp_path / "made", 1)
    ran: list[tuple[str, int, int, Path]] = []

    def finish(name: str, config: Any, folder: Path) -> dict[str, Any]:
        """What a run does, as far as compare sees it: its summary, also in its folder."""
        ran.append((name, config.seed, config.partition.seed, folder))
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text(json.dumps(seed1[name]), encoding="utf-8")
        return seed1[name]

    def run_centralized(config: Any, folder: Path) -> dict[str, Any]:
        # the federation's local epochs: 1 round of stage 1, 2 of stage 2, 1 epoch each
        assert (config.train.stage1_epochs, config.train.stage2_epochs) == (1, 2)
        return finish("centralized", config, folder)

    def run_simulation(settings: Any, **_: Any) -> dict[str, Any]:
        config = settings.experiment()
        return finish(config.federation.strategy, config, settings.out_dir)

    monkeypatch.setattr(fedrs.centralized, "run_centralized", run_centralized)
    monkeypatch.setattr(fedrs.server.simulation, "run_simulation", run_simulation)
    console = Console(width=80, record=True, file=io.StringIO())
    monkeypatch.setattr(compare, "console", console)

    args = ["compare", "--config", str(SMOKE), "--out", str(out), "--seeds", "0,1"]
    args += ["--set", "federation.rounds=3"]
    assert cli(args) == 0
    assert ran == [
        (name, 1, 1, out / "seed-1" / name) for name in ("centralized", "fedavg", "modality-aware")
    ]
    text = console.export_text()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    assert text.count("reading") == 3
    lines = [line.split() for line in text.splitlines()]
    fedavg = _row(lines, "fedavg")
    # mAP@20 0.79 and 0.81: 0.80 +- 12.706 x 0.01
    assert lines[fedavg][1] == "0.800" and lines[fedavg + 1][:2] == ["±95%", "0.127"]
    central = _row(lines, "centralized")
    assert lines[central][-1] == "110.0" and lines[central + 1][-1] == "127.1"
    assert ["mAP@20", "99%", "3", "6", "90.00", "1/2"] in lines  # seed 1 only
    assert ["PSNR", "S2", "within", "0.5", "dB", "3", "6", "78.00", "2/2"] in lines

    result = json.loads((out / "comparison.json").read_text())
    assert list(result) == ["centralized", "fedavg", "modality-aware"]
    row = result["fedavg"]
    assert row["confidence"] == 0.95 and list(row["seeds"]) == ["0", "1"]
    assert row["mean"]["mAP@20"] == pytest.approx(0.80)
    assert row["half_width"]["mAP@20"] == pytest.approx(0.127062, abs=1e-6)
    assert [row["seeds"][s]["mAP@20"] for s in "01"] == pytest.approx([0.79, 0.81])
    assert row["seeds"]["0"]["targets"]["map@20 99%"] is None
    assert row["seeds"]["1"]["targets"]["map@20 99%"]["bytes"] == 90_000_000
    assert row["targets"]["map@20 99%"] == {
        "seeds": 2,
        "reached": 1,
        "round": 3.0,
        "passes": 6.0,
        "bytes": 90e6,
    }
    assert result["centralized"]["half_width"]["wall s"] == pytest.approx(127.062, abs=1e-3)
    assert "targets" not in result["centralized"]
    assert (out / "comparison.png").is_file()

    # paired over the seeds: each federation minus centralized, modality-aware minus fedavg
    assert "paired" not in result["centralized"]
    assert list(result["fedavg"]["paired"]) == ["centralized"]
    assert list(result["modality-aware"]["paired"]) == ["centralized", "fedavg"]
    versus = result["modality-aware"]["paired"]["fedavg"]
    assert versus["seeds"] == [0, 1] and versus["confidence"] == 0.95
    # mAP@20 0.80 - 0.79 and 0.80 - 0.81: mean 0, s = 0.01 x sqrt(2), 12.706 x s / sqrt(2)
    assert versus["mean"]["mAP@20"] == pytest.approx(0.0, abs=1e-12)
    assert versus["half_width"]["mAP@20"] == pytest.approx(0.127062, abs=1e-6)
    assert versus["clear"]["mAP@20"] is False
    # 18 MB up against 30 at both seeds: no spread, clear of zero
    assert versus["mean"]["MB up"] == pytest.approx(-12.0)
    assert versus["half_width"]["MB up"] == pytest.approx(0.0) and versus["clear"]["MB up"]
    # the centralized run sends nothing up: no difference there
    assert result["fedavg"]["paired"]["centralized"]["mean"]["MB up"] is None
    paired = _row(lines, "modality-aware")  # the figures table's row comes first
    pair = next(
        i
        for i in range(paired + 1, len(lines))
        if lines[i][:3] == ["modality-aware", "-", "fedavg"]
    )
    assert lines[pair][3] == "+0.000" and lines[pair][-1] == "-12.00*"
    assert lines[pair + 1][0] == "±95%" and lines[pair + 1][1] == "0.127"

    # a second time every summary is read, none run
    ran.clear()
    assert cli(args) == 0
    assert ran == [] and console.export_text().count("reading") == 6


def test_compare_of_one_seed_keeps_one_folder_a_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache_env: Path
) -> None:
    """Without ``--seeds``: ``<out>/<run>`` as ever, one figure a cell, targets beside them."""
    import json

    import fedrs.cli.compare as compare
    from fedrs.cli import main as cli

    out = tmp_path / "compare"
    _write_seed(out, 0)
    console = Console(width=80, record=True, file=io.StringIO())
    monkeypatch.setattr(compare, "console", console)
    assert cli(["compare", "--config", str(SMOKE), "--out", str(out)]) == 0
    text = console.export_text()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    assert "±95%" not in text and text.count("reading") == 3
    lines = [line.split() for line in text.splitlines()]
    assert lines[_row(lines, "fedavg")][:4] == ["fedavg", "0.790", "0.500", "0.595"]
    assert ["PSNR", "S2", "within", "0.5", "dB", "3", "6", "90.00"] in lines
    result = json.loads((out / "comparison.json").read_text())
    assert list(result) == ["centralized", "fedavg", "modality-aware"]
    assert result["fedavg"]["mAP@20"] == 0.79 and result["fedavg"]["MB up"] == 30.0
    assert result["fedavg"]["targets"]["map@20 95%"]["round"] == 2
    assert "targets" not in result["centralized"]


def test_seeds_are_parsed_and_set_both_seeds() -> None:
    from fedrs.cli.compare import parse_seeds, seed_overrides
    from fedrs.config import load_config
    from fedrs.errors import InputError

    assert parse_seeds("0, 1,2,") == [0, 1, 2]
    for bad in ("", "0,x", "1,1", " , "):
        with pytest.raises(InputError):
            parse_seeds(bad)
    config = load_config(SMOKE, seed_overrides(7))
    assert (config.seed, config.partition.seed) == (7, 7)


def test_paired_pairs_in_the_order_given() -> None:
    from fedrs.cli.compare import paired_pairs

    names = ["centralized", "fedavg", "modality-aware"]
    assert paired_pairs(names) == [
        ("fedavg", "centralized"),
        ("modality-aware", "centralized"),
        ("modality-aware", "fedavg"),
    ]
    assert paired_pairs(["fedavg", "krum"]) == [("krum", "fedavg")]
    assert paired_pairs(["centralized"]) == []
