"""Speed benchmarks that print ratios against a baseline run in the same process.

Layer 4 (DESIGN.md, beside `callbacks/`): imports `modules/`, `datamodules/` and `evaluation/`;
only `commands/` imports it (`python main.py bench --what <name>`, commands/bench.py).

    sampling.py    next-scale vs raster-scan sampling; the sampling step's cost before vs after
"""
