"""Benchmarks and the load test (see README.md here); not tests."""
