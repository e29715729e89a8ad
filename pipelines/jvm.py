"""The JVM dependencies of the project: pinned Maven coordinates, resolved once into ``.jars/``.

Two jar sets, each resolved with its transitive dependencies from Maven Central by Apache Ivy
(the resolver pyspark ships, so a fresh machine needs only Python and Java):

* ``spark``: what a local or standalone-cluster (``spark://``) SparkSession adds to pyspark's
  own jars: delta-spark (matching the pinned ``delta_spark`` wheel), Spark's Kafka connector
  (matching the pinned pyspark) and hadoop-aws for ``s3a://`` storage (matching pyspark's
  Hadoop). Jars pyspark already ships (same artifact) are left out of the classpath so one
  version of each class is loaded.
* ``broker``: the Apache Kafka server (KRaft) the embedded broker runs, in its own JVM and on its
  own classpath.

``make`` resolves both on first use (``python -m pipelines.jvm resolve``); everything runs offline
afterwards. On Databricks the runtime's own jars are used and nothing here is needed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import quoteattr

DELTA_VERSION = "4.4.0"
SPARK_VERSION = "4.2.0"
HADOOP_VERSION = "3.5.0"
KAFKA_VERSION = "4.1.1"

# Coordinates: group:artifact:version. Exclusions: group:artifact pairs never fetched.
JAR_SETS: dict[str, tuple[str, ...]] = {
    "spark": (
        f"io.delta:delta-spark_4.2_2.13:{DELTA_VERSION}",
        f"org.apache.spark:spark-sql-kafka-0-10_2.13:{SPARK_VERSION}",
        f"org.apache.hadoop:hadoop-aws:{HADOOP_VERSION}",
    ),
    "broker": (
        f"org.apache.kafka:kafka_2.13:{KAFKA_VERSION}",
        f"org.apache.kafka:kafka-tools:{KAFKA_VERSION}",
        # Kafka logs through SLF4J: without a binding its log (and a failed start's reason) is lost.
        "org.apache.logging.log4j:log4j-slf4j-impl:2.24.3",
    ),
}
# hadoop-aws depends on the whole AWS SDK v2 bundle (hundreds of MB); s3a needs only S3 and STS.
EXCLUDED: dict[str, tuple[str, ...]] = {
    "spark": ("software.amazon.awssdk:bundle",),
    "broker": (),
}
AWS_SDK_VERSION = "2.35.4"  # what hadoop-aws 3.5.0 is built against
ADDED: dict[str, tuple[str, ...]] = {
    "spark": tuple(
        f"software.amazon.awssdk:{module}:{AWS_SDK_VERSION}"
        for module in ("s3", "s3-transfer-manager", "sts")
    ),
    "broker": (),
}
# JVM classes each set must provide (checked by ``lakehouse doctor``).
PROBE_CLASSES: dict[str, dict[str, str]] = {
    "spark": {
        "delta-spark": "io.delta.tables.DeltaTable",
        "spark-sql-kafka": "org.apache.spark.sql.kafka010.KafkaSourceProvider",
        "hadoop-aws": "org.apache.hadoop.fs.s3a.S3AFileSystem",
    },
    "broker": {"kafka": "kafka.Kafka"},
}
MANIFEST = "manifest.json"


class JarsMissingError(RuntimeError):
    """A jar set is not resolved (the message names the command that resolves it)."""


@dataclass(frozen=True)
class JarSet:
    name: str
    folder: Path
    jars: tuple[Path, ...]


def jars_root() -> Path:
    """Where jar sets live: ``$LAKEHOUSE_JARS`` or ``<checkout>/.jars``."""
    configured = os.environ.get("LAKEHOUSE_JARS")
    if configured:
        return Path(configured).expanduser().resolve()
    return Path(__file__).resolve().parent.parent / ".jars"


def pyspark_jars() -> Path:
    """pyspark's own jars folder (found without importing pyspark, which the collector and the
    broker never need)."""
    spec = importlib.util.find_spec("pyspark")
    if spec is None or spec.origin is None:
        raise JarsMissingError("pyspark is not installed; run `make install`")
    return Path(spec.origin).resolve().parent / "jars"


def jar_set(name: str, root: Path | None = None) -> JarSet:
    """The resolved jars of ``name`` (``spark`` or ``broker``).

    Raises:
        JarsMissingError: the set was never resolved or its pins changed since.
    """
    folder = (root or jars_root()) / name
    manifest = folder / MANIFEST
    fix = "run `make install` (or `python -m pipelines.jvm resolve`) once with network access"
    if not manifest.is_file():
        raise JarsMissingError(f"the {name} jars are not resolved ({folder} is missing); {fix}")
    recorded = json.loads(manifest.read_text())
    if recorded.get("coordinates") != list(JAR_SETS[name]):
        raise JarsMissingError(
            f"the {name} jars in {folder} were resolved for {recorded.get('coordinates')}, "
            f"but the project pins {list(JAR_SETS[name])}; {fix}"
        )
    jars = tuple(folder / jar for jar in recorded["classpath"])
    missing = [str(j) for j in jars if not j.is_file()]
    if missing:
        raise JarsMissingError(f"{len(missing)} {name} jars are missing ({missing[0]}, …); {fix}")
    return JarSet(name, folder, jars)


def resolve(name: str, root: Path | None = None, *, force: bool = False) -> JarSet:
    """Resolve ``name``'s coordinates with their dependencies into ``<root>/<name>``.

    Already resolved sets (same pins) are returned as they are unless ``force``.
    """
    if not force:
        try:
            return jar_set(name, root)
        except JarsMissingError:
            pass
    root = root or jars_root()
    folder = root / name
    cache = root / "ivy-cache"
    java = shutil.which("java", path=_java_path())
    if java is None:
        raise JarsMissingError("java was not found: install Java 17 (or set JAVA_HOME)")
    ivy = sorted(pyspark_jars().glob("ivy-*.jar"))
    if not ivy:
        raise JarsMissingError(f"pyspark ships no Ivy jar in {pyspark_jars()}; reinstall pyspark")
    staging = Path(tempfile.mkdtemp(prefix=f"jars-{name}-", dir=root if root.exists() else None))
    try:
        settings = staging / "ivysettings.xml"
        settings.write_text(_IVY_SETTINGS)
        module = staging / "ivy.xml"
        module.write_text(_ivy_module(name))
        retrieved = staging / "jars"
        command = [
            java,
            "-cp",
            str(ivy[-1]),
            "org.apache.ivy.Main",
            "-settings",
            str(settings),
            "-cache",
            str(cache),
            "-ivy",
            str(module),
            "-confs",
            "default",
            "-types",
            "jar",
            "bundle",
            "-retrieve",
            f"{retrieved}/[organisation]__[artifact]-[revision](-[classifier]).[ext]",
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not retrieved.is_dir():
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            raise JarsMissingError(
                f"resolving the {name} jars from Maven Central failed (is it reachable?):\n{tail}"
            )
        classpath = _classpath(name, sorted(retrieved.iterdir()))
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        for jar in retrieved.iterdir():
            shutil.move(str(jar), folder / jar.name.split("__", 1)[1])
        (folder / MANIFEST).write_text(
            json.dumps({"coordinates": list(JAR_SETS[name]), "classpath": classpath}, indent=2)
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return jar_set(name, root)


def _classpath(name: str, retrieved: list[Path]) -> list[str]:
    """The retrieved jars to put on the classpath (file names without the organisation)."""
    if name != "spark":
        return sorted(p.name.split("__", 1)[1] for p in retrieved)
    shipped = {_artifact(p.name) for p in pyspark_jars().glob("*.jar")}
    return sorted(
        p.name.split("__", 1)[1]
        for p in retrieved
        if _artifact(p.name.split("__", 1)[1]) not in shipped
    )


def _artifact(file_name: str) -> str:
    """``kafka-clients-3.9.1.jar`` -> ``kafka-clients`` (the name up to the version)."""
    stem = file_name.removesuffix(".jar")
    parts = stem.split("-")
    for i, part in enumerate(parts):
        if part[:1].isdigit():
            return "-".join(parts[:i])
    return stem


def _ivy_module(name: str) -> str:
    lines = [
        '<ivy-module version="2.0">',
        f'  <info organisation="lakehouse" module="jars-{name}"/>',
        '  <configurations><conf name="default"/></configurations>',
        "  <dependencies>",
    ]
    for coordinate in (*JAR_SETS[name], *ADDED[name]):
        group, artifact, version = coordinate.split(":")
        lines.append(
            f"    <dependency org={quoteattr(group)} name={quoteattr(artifact)} "
            f'rev={quoteattr(version)} conf="default->default"/>'
        )
    for excluded in EXCLUDED[name]:
        group, artifact = excluded.split(":")
        lines.append(f"    <exclude org={quoteattr(group)} module={quoteattr(artifact)}/>")
    lines += ["  </dependencies>", "</ivy-module>", ""]
    return "\n".join(lines)


# Maven Central only (the ibiblio resolver's default root); no local Maven repository, whose
# POM-only entries make Ivy fail.
_IVY_SETTINGS = """<ivysettings>
  <settings defaultResolver="central"/>
  <resolvers>
    <ibiblio name="central" m2compatible="true"/>
  </resolvers>
</ivysettings>
"""


def _java_path() -> str:
    home = os.environ.get("JAVA_HOME")
    path = os.environ.get("PATH", "")
    return f"{home}/bin{os.pathsep}{path}" if home else path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.jvm", description=__doc__)
    parser.add_argument("command", choices=["resolve", "show"])
    parser.add_argument("--force", action="store_true", help="resolve again even if present")
    args = parser.parse_args(argv)
    try:
        for name, coordinates in JAR_SETS.items():
            if args.command == "resolve":
                print(f"resolving the {name} jars ({', '.join(coordinates)}) …", flush=True)
                jars = resolve(name, force=args.force)
            else:
                jars = jar_set(name)
            size = sum(j.stat().st_size for j in jars.jars) / 1e6
            print(f"{name}: {len(jars.jars)} jars, {size:.0f} MB in {jars.folder}")
    except JarsMissingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
