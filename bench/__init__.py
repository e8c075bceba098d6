"""Benchmarks: quality tables, throughput, latency. Run through `reaseq bench …`, never as timed tests."""
