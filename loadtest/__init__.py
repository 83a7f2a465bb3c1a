"""Benchmarks and replay-based load tests."""
