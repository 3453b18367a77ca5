"""Helpers of the project's tools (benchmarks)."""
