"""Benchmarks run by hand: speed against a baseline in the same process, and sampling configs scored.

Layer 4 (DESIGN.md, beside `callbacks/`): imports `modules/`, `datamodules/` and `evaluation/`;
only `commands/` imports it (`python main.py bench --what <name>`, commands/bench.py).

    sampling.py          next-scale vs raster-scan sampling; the sampling step's cost before vs after
    sampling_geneval.py  GenEval for a list of sampling configs on one AR checkpoint (python -m)
"""
