"""Benchmark code, beside the core and never imported by it: grids of runs into results
stores, the comparisons and micro-benchmarks of `cmkd bench ...`, and the pages they write
(each rendered from a compact store beside it, see pagestore.py). The CLI enters through
commands.py only. Each benchmark compares against a baseline measured in the same process and
reports the ratio, never an absolute time alone."""
