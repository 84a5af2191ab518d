"""Benchmarks that print one JSON line of figures; see docs/benchmarks.md."""
