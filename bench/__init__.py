"""Benchmarks that run Cricket beside its peers on this machine and print both figures.

`python -m bench` runs them all; `python -m bench pull` runs one. Figures also go to
bench/out/<name>.json."""
