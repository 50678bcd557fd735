"""Benchmarks: one module per section (`python -m marlcli.bench` runs them; `make bench`)."""
