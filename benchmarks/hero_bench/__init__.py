"""Benchmark harness: side-by-side timing, FLOP counts and quality metrics (imports the library, never the reverse)."""
