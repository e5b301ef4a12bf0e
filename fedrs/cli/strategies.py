"""List the aggregation strategies, one line each: name, Flower class, replies, own options.

Set one with `fedrs simulate --strategy NAME` or `federation.strategy`, its options in
`[federation.strategy_options]` (Flower's defaults where not given).  Every strategy gets
fedrs' checked replies, local-only keys, finite float64 merges, byte accounting, coded updates
and failure policy.  "partial": clients send what they trained and each key is aggregated over
the clients that sent it; "whole": every client sends every shared key.
"""

from __future__ import annotations

import json

import typer

from fedrs.cli._common import console


def main(
    json_: bool = typer.Option(False, "--json", help="Print a JSON object instead."),
) -> None:
    # heavy: flwr, imported when the command runs
    from fedrs.strategies import STRATEGIES, strategy_options

    # heavy: flwr, imported when the command runs
    from fedrs.strategies.guard import GuardedStrategy

    common = [o for o in strategy_options("fedavg")]
    rows = {}
    for name in sorted(STRATEGIES):
        cls = STRATEGIES[name]
        guarded = issubclass(cls, GuardedStrategy)
        rows[name] = {
            "flower": cls.flower.__name__ if guarded else cls.__name__,
            "replies": ("partial" if cls.partial_default else "whole") if guarded else "-",
            "options": [o for o in strategy_options(name) if o not in common],
        }
    if json_:
        print(json.dumps({"strategies": rows, "common_options": common}, indent=1))
        return
    for name, row in rows.items():
        line = f"{name:<15} {row['flower']:<14} {row['replies']:<8} "
        console.print(line + (", ".join(row["options"]) or "-"), highlight=False, soft_wrap=True)
    console.print(f"every strategy also takes: {', '.join(common)}", soft_wrap=True)
