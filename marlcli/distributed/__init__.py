"""Data-parallel runs: ``collectives`` (below the trainer) and ``launch`` (above it)."""
