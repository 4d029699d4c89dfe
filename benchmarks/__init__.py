"""Benchmarks run by hand: speed against a baseline in the same process, and sampling configs scored.

Layer 4 (DESIGN.md, beside `callbacks/`): imports `modules/`, `datamodules/` and `evaluation/`;
only `commands/` imports it (`python main.py bench --what <name>`, commands/bench.py).

    sampling.py          next-scale vs raster-scan sampling; the sampling step's cost before vs after
    sampling_geneval.py  GenEval for a list of sampling configs on one AR checkpoint (python -m)
    truth_prefix.py      GenEval with the first m scales from the truth: where the AR model fails (python -m)
    refiner.py           the refiner's metric table, and AR samples decoded vs refined (python -m)
"""
from __future__ import annotations

import sys
from typing import Callable


def run_cli(fn: Callable, *user_errors: type[Exception]) -> None:
    """`python -m benchmarks.<name>`: `fn`'s arguments from the command line (jsonargparse); an
    error of the given kinds (bad input) is one line on stderr and exit 2."""
    from jsonargparse import CLI

    try:
        CLI(fn, as_positional=False)
    except user_errors as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
