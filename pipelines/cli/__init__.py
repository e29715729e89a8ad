"""``lakehouse``: the command line of the streaming lakehouse (assembled in ``main.py``).

This package's ``__init__`` imports nothing: ``python -m pipelines.cli`` imports it before its
``__main__`` module exists, and pyspark (through Great Expectations) exits a process whose
``__main__`` has no file, taking it for a doctest run.
"""
