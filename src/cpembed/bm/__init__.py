"""Benchmark metrics of Cell Painting batch correction (CellPainTR Table 1, JUMP benchmark, CWA-MSN probes)."""

__all__: list[str] = []
