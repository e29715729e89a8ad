"""The contract check two ways over the same rows: the Python validator as an Arrow UDF (how the
gate ran it until the rules were compiled) against the rules compiled to Spark expressions.

One cached DataFrame of raw messages from the synthetic clickstream (``bad_fraction`` of them
bad), both checks materialised with the ``noop`` sink: a warm-up run of each (excluded), then
``runs`` timed runs of each, best kept. Both must name the same rules for every row.

    PYTHONPATH=. python -m pipelines.benchmarks.contract_check --rows 100000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.functions import ArrowUDFType
from pyspark.sql.types import ArrayType, StringType, StructField, StructType

from pipelines.config import load_settings
from pipelines.contracts.registry import ContractRegistry
from pipelines.contracts.spark_rules import ContractRules
from pipelines.spark import build_spark
from pipelines.synthetic.clickstream import ClickstreamGenerator

_REGISTRIES: dict[str, ContractRegistry] = {}  # one per Python worker, built on first use


def bench_contract_check(
    spark: SparkSession, rows: int = 100_000, bad_fraction: float = 0.02, runs: int = 3
) -> dict[str, Any]:
    """Time both checks over the same ``rows`` messages and return the figures."""
    end = datetime(2026, 11, 20, tzinfo=UTC)
    generator = ClickstreamGenerator(
        users=2_000, items=500, seed=7, bad_fraction=bad_fraction, end=end
    )
    values = [(i, e.value.decode()) for i, e in enumerate(generator.events(rows))]
    cores = spark.sparkContext.defaultParallelism
    messages = spark.createDataFrame(values, "id long, value string").repartition(cores).cache()
    messages.count()
    checks = {
        "python_udf": messages.withColumn("c", _reference_udf()(F.col("value"))),
        "spark_expressions": ContractRules(ContractRegistry()).add_violations(messages, into="c"),
    }
    seconds: dict[str, float] = {}
    for name, checked in checks.items():
        _materialise(checked)  # warm-up: Python workers, code generation, JIT
        best = float("inf")
        for _ in range(runs):
            t0 = time.perf_counter()
            _materialise(checked)
            best = min(best, time.perf_counter() - t0)
        seconds[name] = best
    differ = (
        checks["python_udf"]
        .select("id", F.col("c.rules").alias("expected"))
        .join(checks["spark_expressions"].select("id", F.col("c.rules").alias("got")), "id")
        .filter(F.col("expected") != F.col("got"))
        .count()
    )
    messages.unpersist()
    return {
        "benchmark": "contract_check",
        "rows": rows,
        "bad_fraction": bad_fraction,
        "python_udf_seconds": round(seconds["python_udf"], 3),
        "python_udf_rows_per_s": round(rows / seconds["python_udf"]),
        "spark_expressions_seconds": round(seconds["spark_expressions"], 3),
        "spark_expressions_rows_per_s": round(rows / seconds["spark_expressions"]),
        "speedup": round(seconds["python_udf"] / seconds["spark_expressions"], 2),
        "rows_naming_other_rules": differ,
        "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
    }


def _materialise(frame: DataFrame) -> None:
    frame.write.format("noop").mode("overwrite").save()


def _reference_udf() -> Any:
    """``ContractRegistry.check_json`` per row as a vectorised Arrow UDF."""
    result = StructType(
        [
            StructField("rules", ArrayType(StringType(), False), False),
            StructField("detail", StringType()),
        ]
    )

    def check(values: pa.Array) -> pa.Array:
        registry = _REGISTRIES.get("") or _REGISTRIES.setdefault("", ContractRegistry())
        offsets: list[int] = [0]
        names: list[str] = []
        details: list[str | None] = []
        for raw in values.to_pylist():
            found = registry.check_json(raw)
            names.extend(v.rule for v in found)
            details.append(f"{found[0].rule}: {found[0].detail}" if found else None)
            offsets.append(len(names))
        rules = pa.ListArray.from_arrays(
            pa.array(offsets, pa.int32()), pa.array(names, pa.string())
        )
        return pa.StructArray.from_arrays(
            [rules, pa.array(details, pa.string())],
            fields=[
                pa.field("rules", pa.list_(pa.string()), False),
                pa.field("detail", pa.string()),
            ],
        )

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="It is preferred to specify type hints")
        udf: Any = F.arrow_udf(check, result, ArrowUDFType.SCALAR)
    return udf


def main() -> None:

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--bad-fraction", type=float, default=0.02)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    spark = build_spark(load_settings(), app_name="bench-contract-check")
    spark.sparkContext.setLogLevel("ERROR")
    print(json.dumps(bench_contract_check(spark, args.rows, args.bad_fraction, args.runs)))


if __name__ == "__main__":
    main()
