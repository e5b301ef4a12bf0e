"""Maintainers' tools that regenerate what the package carries.

``python -m fedrs.data.synth calibrate [PATCHES]`` prints a fitted ``CALIBRATION``
(:func:`fedrs.data.synth.calibrate.main`); ``python -m fedrs.data.synth stats METADATA``
rewrites ``stats.json`` from the official v2.0 ``metadata.parquet``
(:func:`fedrs.data.synth.stats.main`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from fedrs.data.synth import calibrate, stats

TOOLS: dict[str, Callable[[Sequence[str] | None], int]] = {
    "calibrate": calibrate.main,
    "stats": stats.main,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the tool named by the first argument with the others."""
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] not in TOOLS:
        print(f"usage: python -m fedrs.data.synth {{{','.join(TOOLS)}}} ...", file=sys.stderr)
        return 2
    return TOOLS[args[0]](args[1:])


if __name__ == "__main__":
    raise SystemExit(main())
