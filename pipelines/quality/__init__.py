"""Data quality checks on micro-batches: Great Expectations suites and their results."""
