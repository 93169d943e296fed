"""Benchmarks that run the real pipeline and print figures (JSON). Not part of the test suite."""
