import sys

if not hasattr(sys.modules["__main__"], "__file__"):
    # pytest-xdist workers run under execnet, whose __main__ has no file: pyspark.sql.connect
    # (imported by Great Expectations) would take the process for a doctest run and exit.
    sys.modules["__main__"].__file__ = __file__
