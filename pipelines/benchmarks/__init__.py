"""Benchmarks behind `lakehouse bench …`: each measures its baseline in the same run."""
