"""Typed settings: ``conf/base.yaml`` overlaid by ``conf/<env>.yaml``, ``${ENV_VAR}`` interpolated.

Loaded once per process by the CLI (or a notebook) and passed down explicitly. Unknown keys are
rejected, and a ``${VAR}`` with no default whose variable is unset is an error that names the
config key it was meant to fill, so a missing secret fails at start-up rather than mid-run.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

ENV_VAR = "LAKEHOUSE_ENV"
CONF_DIR_VAR = "LAKEHOUSE_CONF_DIR"
DEFAULT_ENV = "local"
EVENT_TYPES = ("page_view", "click", "search", "add_to_cart", "purchase")

_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


class ConfigError(ValueError):
    """A configuration problem, with a message that names the key and the fix."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


REMOTE_SCHEMES = ("s3://", "s3a://", "gs://", "abfss://")
# Filesystems Spark's checkpoint manager can write to (a local path has no scheme).
CHECKPOINT_SCHEMES = ("file:", "dbfs:", "hdfs:", "s3a:", "abfss:", "gs:")


class S3Settings(_Model):
    """Object storage for an ``s3://bucket/prefix`` root (delta-rs storage options, boto3).

    Credentials belong in ${SECRETS} or the standard AWS environment/instance profile; they are
    SecretStr and never logged.
    """

    endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint (MinIO, moto); None = AWS."
    )
    region: str = "us-east-1"
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    allow_http: bool = Field(default=False, description="Allow a plain-http endpoint_url.")

    def delta_options(self) -> dict[str, str]:
        """delta-rs ``storage_options`` (object_store keys); secrets are revealed only here."""
        options = {"AWS_REGION": self.region}
        if self.endpoint_url:
            options["AWS_ENDPOINT_URL"] = self.endpoint_url
        if self.allow_http:
            options["AWS_ALLOW_HTTP"] = "true"
        for key, secret in (
            ("AWS_ACCESS_KEY_ID", self.access_key_id),
            ("AWS_SECRET_ACCESS_KEY", self.secret_access_key),
            ("AWS_SESSION_TOKEN", self.session_token),
        ):
            if secret is not None:
                options[key] = secret.get_secret_value()
        # Concurrent Delta commits on S3 are made safe by S3's conditional writes (no lock table).
        options["conditional_put"] = "etag"
        return options

    def boto3_kwargs(self) -> dict[str, str]:
        """Keyword arguments for ``boto3.client("s3", ...)``."""
        kwargs = {"region_name": self.region}
        if self.endpoint_url:
            kwargs["endpoint_url"] = self.endpoint_url
        if self.access_key_id is not None:
            kwargs["aws_access_key_id"] = self.access_key_id.get_secret_value()
        if self.secret_access_key is not None:
            kwargs["aws_secret_access_key"] = self.secret_access_key.get_secret_value()
        if self.session_token is not None:
            kwargs["aws_session_token"] = self.session_token.get_secret_value()
        return kwargs


class StorageSettings(_Model):
    """Where tables, checkpoints and other artifacts live."""

    root: str = "./lakehouse-data"
    checkpoint_root: str | None = Field(
        default=None,
        description="Defaults to <root>/_checkpoints when unset; must be set (to a local or "
        "cluster filesystem path) when root is object storage.",
    )
    s3: S3Settings = S3Settings()

    @model_validator(mode="after")
    def _checkpoints_on_a_hadoop_filesystem(self) -> StorageSettings:
        if self.remote and self.checkpoint_root is None:
            raise ValueError(
                f"storage.root {self.root} is object storage, where Spark cannot keep streaming "
                "checkpoints; set storage.checkpoint_root to a local or cluster filesystem path "
                "(e.g. /var/lib/lakehouse/checkpoints or dbfs:/lakehouse/checkpoints)"
            )
        ckpt = self.checkpoint_root or ""
        if "://" in ckpt and not ckpt.startswith(CHECKPOINT_SCHEMES):
            raise ValueError(
                f"storage.checkpoint_root {ckpt} is not a Hadoop-compatible filesystem; use a "
                f"local path or one of {', '.join(CHECKPOINT_SCHEMES)}"
            )
        if self.root.startswith("s3a://"):
            raise ValueError(
                f"storage.root {self.root}: use s3://… (delta-rs and boto3 read it; Spark "
                "clusters map it to s3a themselves)"
            )
        return self

    @property
    def remote(self) -> bool:
        return self.root.startswith(REMOTE_SCHEMES)

    def s3a_options(self) -> dict[str, str]:
        """Hadoop S3A options serving this root's ``s3://`` paths ({} for other roots).

        Set as ``spark.hadoop.*`` when a local session starts and as session confs when a job
        binds a catalog to a running session (``Catalog.bind``). Secrets are revealed only here.
        """
        if not self.root.startswith("s3://"):
            return {}
        s3 = self.s3
        conf = {
            "fs.s3.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
            "fs.s3a.endpoint.region": s3.region,
        }
        if s3.endpoint_url:
            conf["fs.s3a.endpoint"] = s3.endpoint_url
            conf["fs.s3a.path.style.access"] = "true"
            if s3.endpoint_url.startswith("http://"):
                conf["fs.s3a.connection.ssl.enabled"] = "false"
        if s3.access_key_id is not None and s3.secret_access_key is not None:
            conf["fs.s3a.access.key"] = s3.access_key_id.get_secret_value()
            conf["fs.s3a.secret.key"] = s3.secret_access_key.get_secret_value()
            provider = "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider"
            if s3.session_token is not None:
                conf["fs.s3a.session.token"] = s3.session_token.get_secret_value()
                provider = "org.apache.hadoop.fs.s3a.TemporaryAWSCredentialsProvider"
            conf["fs.s3a.aws.credentials.provider"] = provider
        return conf

    def delta_options(self) -> dict[str, str]:
        """delta-rs storage options for this root ({} for local storage)."""
        return self.s3.delta_options() if self.root.startswith("s3://") else {}

    @property
    def tables_root(self) -> str:
        return _join(self.root, "tables")

    @property
    def checkpoints(self) -> str:
        return self.checkpoint_root or _join(self.root, "_checkpoints")

    def resolved(self) -> StorageSettings:
        """Local roots made absolute, so Spark workers and delta-rs agree on one path."""
        root = self.root if "://" in self.root else str(Path(self.root).expanduser().resolve())
        ckpt = self.checkpoint_root
        if ckpt is not None and "://" not in ckpt:
            ckpt = str(Path(ckpt).expanduser().resolve())
        return StorageSettings(root=root, checkpoint_root=ckpt, s3=self.s3)


class KafkaTopics(_Model):
    """One topic per event type, plus the dead-letter topic for rejects at the edge."""

    page_view: str = "page_views"
    click: str = "user_clicks"
    search: str = "search_queries"
    add_to_cart: str = "add_to_carts"
    purchase: str = "purchase_events"
    dlq: str = "events_dlq"
    identities: str = Field(
        default="user_identities",
        description="Segment-style identify calls (user id <-> anonymous id, traits); not events.",
    )

    def for_event_type(self, event_type: str) -> str:
        if event_type not in EVENT_TYPES:
            raise ConfigError(
                f"no Kafka topic for event type {event_type!r} (known: {', '.join(EVENT_TYPES)})"
            )
        return str(getattr(self, event_type))

    @property
    def event_topics(self) -> list[str]:
        return [self.for_event_type(t) for t in EVENT_TYPES]


class KafkaProducerSettings(_Model):
    compression: Literal["lz4", "zstd", "snappy", "gzip", "none"] = "lz4"
    linger_ms: int = Field(default=20, ge=0)
    batch_num_messages: int = Field(default=10_000, ge=1)
    acks: Literal["all", "1", "0"] = "all"
    enable_idempotence: bool = True
    delivery_timeout_ms: int = Field(default=30_000, ge=1_000)


class KafkaConsumerSettings(_Model):
    starting_offsets: Literal["earliest", "latest"] = "earliest"
    max_offsets_per_trigger: int | None = Field(default=200_000, ge=1)
    min_partitions: int = Field(
        default=2, ge=1, description="Spark tasks a micro-batch is spread over (at least)."
    )
    max_records_per_partition: int = Field(
        default=100_000, ge=1, description="Records one Spark task reads at most."
    )
    poll_timeout_s: float = Field(default=30.0, gt=0)
    fetch_max_wait_ms: int = Field(
        default=20,
        ge=0,
        le=30_000,
        description="How long the broker may hold a fetch that has less than fetch.min.bytes. "
        "Spark reads each topic-partition's range with its own fetches and, at Kafka's default "
        "of 500 ms, waited that long once per partition per micro-batch.",
    )
    metadata_timeout_s: float = Field(default=10.0, gt=0)
    fail_on_data_loss: bool = True


class KafkaSecurity(_Model):
    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None

    def client_config(self) -> dict[str, str]:
        """librdkafka security settings; the password is only revealed here."""
        conf: dict[str, str] = {"security.protocol": self.protocol}
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username is not None:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password is not None:
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        return conf


class KafkaSettings(_Model):
    bootstrap_servers: str = Field(
        default="embedded",
        description="host:port[,host:port] of real brokers; 'file:<path>' for a file holding "
        "that list; or 'embedded' for the broker started by `lakehouse kafka serve` (its "
        "address is read from the storage root). Files are read again when the collector "
        "finds every broker down, so it follows brokers that moved.",
    )
    topics: KafkaTopics = KafkaTopics()
    embedded_partitions: int = Field(
        default=4,
        ge=1,
        le=256,
        description="Partitions per configured topic on the embedded broker.",
    )
    producer: KafkaProducerSettings = KafkaProducerSettings()
    consumer: KafkaConsumerSettings = KafkaConsumerSettings()
    security: KafkaSecurity = KafkaSecurity()

    @field_validator("bootstrap_servers")
    @classmethod
    def _file_has_a_path(cls, value: str) -> str:
        if value.strip().startswith("file:") and not value.strip().removeprefix("file:").strip():
            raise ValueError("'file:' needs the path of the file holding the broker list")
        return value


class TriggerSettings(_Model):
    """How a streaming query is triggered: drain what is there and stop, or run continuously."""

    mode: Literal["available-now", "processing-time"] = "available-now"
    interval: str = "10 seconds"

    @field_validator("interval")
    @classmethod
    def _interval_is_duration(cls, value: str) -> str:
        return spark_interval(value)


def spark_interval(text: str) -> str:
    """A trigger interval in the form Spark accepts (``5s`` -> ``5 seconds``).

    Raises:
        ValueError: not a duration in ms, seconds or minutes.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|seconds?|minutes?|milliseconds?)\s*", text)
    if not match:
        raise ValueError(f"trigger interval {text!r} is not a duration; use e.g. 5s, 500ms, 1m")
    value, unit = match.groups()
    unit = {"s": "seconds", "m": "minutes", "ms": "milliseconds"}.get(unit, unit)
    return f"{value} {unit}"


class StreamingSettings(_Model):
    trigger: TriggerSettings = TriggerSettings()


_DURATION = re.compile(
    r"^\s*(\d+(?:\.\d+)?)\s*(ms|milliseconds?|s|seconds?|m|minutes?|h|hours?|d|days?)\s*$"
)
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """``"30 minutes"``, ``"7 days"``, ``"500ms"`` … as a timedelta (ValueError otherwise)."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration; use e.g. '30 minutes', '7 days', '500ms'")
    value, unit = float(match.group(1)), match.group(2)
    key = "ms" if unit.startswith("milli") or unit == "ms" else unit[0]
    return timedelta(seconds=value * _UNIT_SECONDS[key])


def sql_interval(text: str) -> str:
    """A duration as a Spark SQL interval literal: ``INTERVAL 600 SECONDS``."""
    micros = parse_duration(text) // timedelta(microseconds=1)
    seconds, fraction = divmod(micros, 1_000_000)
    # Plain digits: a float's shortest form turns 40 days into "3.456e+06", which SQL refuses.
    return f"INTERVAL {seconds}{f'.{fraction:06d}'.rstrip('0') if fraction else ''} SECONDS"


class GreatExpectationsSettings(_Model):
    enabled: bool = True
    every_n_batches: int = Field(default=1, ge=1, description="Validate every N-th micro-batch.")
    data_docs: bool = True


class QualitySettings(_Model):
    """The validation gates: rule files, time bounds, Great Expectations."""

    rules_dir: str = Field(default="quality", description="Folder of rule files, under conf/.")
    allowed_lateness: str = "7 days"
    max_future_skew: str = "5 minutes"
    great_expectations: GreatExpectationsSettings = GreatExpectationsSettings()

    @field_validator("allowed_lateness", "max_future_skew")
    @classmethod
    def _is_duration(cls, value: str) -> str:
        parse_duration(value)
        return value


class ChangeFeedTrigger(_Model):
    """How much of a Delta table's change feed one micro-batch reads (Delta's own caps)."""

    max_files_per_trigger: int | None = Field(
        default=1000, ge=1, description="Data files per micro-batch (Delta's default: 1000)."
    )
    max_bytes_per_trigger: str | None = Field(
        default=None, description="A soft cap in bytes per micro-batch, e.g. '512m'."
    )


class SilverSettings(ChangeFeedTrigger):
    session_gap: str = "30 minutes"

    @field_validator("session_gap")
    @classmethod
    def _is_duration(cls, value: str) -> str:
        parse_duration(value)
        return value


class SparkSettings(_Model):
    master: str = "local[2]"
    app_name: str = "lakehouse"
    shuffle_partitions: int = Field(default=4, ge=1)
    driver_memory: str = "2g"
    log_level: Literal["ERROR", "WARN", "INFO", "DEBUG"] = "ERROR"
    conf: dict[str, str] = Field(default_factory=dict)


class DemoSettings(_Model):
    events: int = Field(default=50_000, ge=1)
    users: int = Field(default=2_000, ge=1)
    items: int = Field(default=500, ge=1)
    bad_fraction: float = Field(default=0.02, ge=0, le=1)
    seed: int = 42


class GoldSettings(ChangeFeedTrigger):
    on_suite_failure: Literal["stop", "continue"] = Field(
        default="stop",
        description="A candidate batch that fails its gold suite is never published; 'stop' "
        "fails the query, 'continue' records the failure and goes on with the next batch.",
    )
    max_staleness: str = "7 days"
    publish_every: str = Field(
        default="1 hour",
        description="Event-time slice of published history: a micro-batch spanning several "
        "slices (a backfill, a large batch) publishes features as of each slice's end.",
    )

    @field_validator("max_staleness", "publish_every")
    @classmethod
    def _is_duration(cls, value: str) -> str:
        parse_duration(value)
        return value


class MlflowSettings(_Model):
    tracking_uri: str | None = Field(
        default=None, description="Defaults to a SQLite store under <storage root>/mlflow."
    )
    experiment: str = "lakehouse-recommender"
    registered_model: str = "lakehouse-recommender"
    promotion_margin: float = Field(
        default=0.01,
        ge=0,
        description="A challenger must beat the champion's NDCG@k by this share.",
    )
    k: int = Field(default=10, ge=1)
    test_fraction: float = Field(default=0.2, gt=0, lt=1)
    neighbours: int = Field(default=50, ge=1)
    min_history: int = Field(default=3, ge=1)

    def resolved_tracking_uri(self, storage: StorageSettings) -> str:
        if self.tracking_uri:
            return self.tracking_uri
        root = storage.resolved().root
        if "://" in root:
            raise ConfigError("set mlflow.tracking_uri when storage.root is remote")
        return f"sqlite:///{root}/mlflow/mlflow.db"

    def artifact_root(self, storage: StorageSettings) -> str:
        return f"{storage.resolved().root}/mlflow/artifacts"


class DriftSettings(_Model):
    warn: float = Field(default=0.1, gt=0)
    alert: float = Field(default=0.25, gt=0)
    bins: int = Field(default=10, ge=2)
    features: list[str] = Field(
        default_factory=lambda: [
            "page_view_count_7d",
            "click_count_7d",
            "add_to_cart_count_7d",
            "purchase_count_30d",
            "distinct_items_30d",
            "recency_s",
            "sessions_7d",
            "mean_session_length_s_7d",
            "revenue_30d",
        ],
        description="gold.user_features columns compared by PSI.",
    )


class RateLimitSettings(_Model):
    """A token bucket per write key, in events."""

    events_per_second: float = Field(default=50_000, gt=0)
    burst: int = Field(default=100_000, ge=1, description="Events a key may send at once.")


DEFAULT_SEGMENT_EVENTS = {
    "Product Viewed": "page_view",
    "Product Clicked": "click",
    "Product Added": "add_to_cart",
    "Products Searched": "search",
    "Order Completed": "purchase",
}


class CollectorSettings(_Model):
    """The HTTP collector: where it listens, who may write, and the limits it enforces."""

    host: str = "127.0.0.1"
    port: int = Field(default=8090, ge=0, le=65535)
    write_keys: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="name -> write key; keys come from ${ENV} secrets and are never logged.",
    )
    max_body_bytes: int = Field(
        default=1_048_576, ge=1_024, description="Largest (decompressed) request body; 413 above."
    )
    max_events_per_request: int = Field(
        default=2_000,
        ge=1,
        description="Events per request *after* Segment mapping (an Order Completed counts one "
        "per product line); 413 above. The rate limit counts the same events.",
    )
    max_event_bytes: int = Field(
        default=262_144,
        ge=1_024,
        le=900_000,
        description="Largest serialised event; a larger one goes to the DLQ as event_too_large "
        "(Kafka refuses messages over ~1 MB, which would fail the whole request forever).",
    )
    max_dlq_excerpt_bytes: int = Field(
        default=4_096,
        ge=256,
        le=65_536,
        description="A dead-letter record keeps the original only up to this size; a larger "
        "one is kept as an excerpt of this length, its byte size and its SHA-256.",
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="A connection must deliver a request line and headers within this long of "
        "opening or of its previous answer, else it is closed: a client trickling header bytes "
        "(slowloris) or sending nothing cannot hold a connection, and an idle keep-alive "
        "connection is closed after the same time.",
    )
    body_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="A request body must arrive within this long (408 after): a client "
        "trickling bytes cannot hold a connection.",
    )
    max_nesting: int = Field(
        default=32, ge=4, le=200, description="Deepest JSON nesting in an event (too_deep)."
    )
    dedup_window: int = Field(
        default=200_000,
        ge=0,
        description="Event ids acknowledged by Kafka that the collector remembers, so a retried "
        "request never publishes them again (0 turns it off).",
    )
    rate_limit: RateLimitSettings = RateLimitSettings()
    produce_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="Wait this long for Kafka's acknowledgement, then 503. Keep it well under "
        "the SDKs' request timeout (10 s in ours, 10-15 s in Segment's): a client that gives up "
        "first never reads the 503 and cannot tell a lost request from a slow one.",
    )
    linger_ms: int = Field(default=2, ge=0, description="Producer batching delay (latency).")
    broker_reresolve_s: float = Field(
        default=2.0,
        gt=0,
        le=300,
        description="While Kafka is unreachable, read the broker address (kafka.bootstrap_servers "
        "'embedded' or 'file:') again this often; when it changed, produce through a new "
        "producer to the new brokers.",
    )
    truncate_ip: bool = Field(
        default=True, description="Zero the host part of client IPs (IPv4 /24, IPv6 /48)."
    )
    trust_forwarded_for: bool = Field(
        default=False, description="Take the client IP from X-Forwarded-For (behind a proxy)."
    )
    segment_events: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_SEGMENT_EVENTS),
        description="Segment track event names -> contract event types.",
    )

    def first_write_key(self) -> str:
        """The first configured key: what the demo and the benchmark send with.

        Raises:
            ConfigError: no key is configured.
        """
        if not self.write_keys:
            raise ConfigError(
                "collector.write_keys is empty; add one in conf/<env>.yaml, e.g. "
                "collector.write_keys.web: ${LAKEHOUSE_WRITE_KEY_WEB}"
            )
        return next(iter(self.write_keys.values())).get_secret_value()

    @field_validator("segment_events")
    @classmethod
    def _known_types(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted({t for t in value.values() if t not in EVENT_TYPES})
        if unknown:
            raise ValueError(
                f"maps to unknown event types {unknown} (known: {', '.join(EVENT_TYPES)})"
            )
        return value


class AlertSettings(_Model):
    """Thresholds evaluated by `lakehouse alerts check` (and exported with the metrics)."""

    freshness_s: float = Field(
        default=3_600, gt=0, description="A watched table's freshness (commit - newest event)."
    )
    freshness_tables: list[str] = Field(
        default_factory=lambda: ["silver.events", "gold.user_features_history"]
    )
    quarantine_rate: float = Field(
        default=0.05, ge=0, le=1, description="Quarantined share of input over recent batches."
    )
    recent_batches: int = Field(default=5, ge=1, description="Batches the rate is taken over.")
    backlog: int = Field(default=1_000_000, ge=0, description="Unread records of any query.")
    stalled_after_s: float = Field(
        default=900, gt=0, description="No progress this long while work is waiting = stalled."
    )
    suite_failures: int = Field(default=0, ge=0, description="Failed GX suites allowed in 24 h.")
    drift_psi: float = Field(default=0.25, gt=0, description="PSI of any drift feature.")
    webhook_url: str | None = Field(
        default=None, description="POST the fired alerts as JSON here (Slack-compatible text)."
    )


class MonitoringSettings(_Model):
    host: str = "127.0.0.1"
    port: int = Field(default=9108, ge=0, le=65535, description="`lakehouse metrics serve`.")
    alerts: AlertSettings = AlertSettings()


class Settings(_Model):
    """The whole configuration of one environment."""

    env: str
    storage: StorageSettings = StorageSettings()
    kafka: KafkaSettings = KafkaSettings()
    streaming: StreamingSettings = StreamingSettings()
    spark: SparkSettings = SparkSettings()
    quality: QualitySettings = QualitySettings()
    silver: SilverSettings = SilverSettings()
    gold: GoldSettings = GoldSettings()
    mlflow: MlflowSettings = MlflowSettings()
    drift: DriftSettings = DriftSettings()
    collector: CollectorSettings = CollectorSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    demo: DemoSettings = DemoSettings()
    conf_dir: str = Field(
        default="conf", description="Set by the loader: where the YAML came from."
    )

    @property
    def rules_dir(self) -> Path:
        return Path(self.conf_dir) / self.quality.rules_dir

    @model_validator(mode="before")
    @classmethod
    def _no_engine_choice(cls, data: Any) -> Any:
        if isinstance(data, dict) and "engines" in data:
            raise ValueError(
                "engines: there is one engine now (delta-spark and Spark's Kafka connector, "
                "the same locally and on a cluster); remove the engines section from the config"
            )
        return data


def load_settings(
    env: str | None = None,
    conf_dir: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Load ``base.yaml`` overlaid by ``<env>.yaml`` (then ``overrides``) into validated Settings.

    Args:
        env: environment name; defaults to ``$LAKEHOUSE_ENV`` and then ``local``.
        conf_dir: folder with the YAML files; defaults to ``$LAKEHOUSE_CONF_DIR``, then the
            nearest ``conf/`` above the working directory, then the one beside the package.
        overrides: a nested mapping merged last (used by tests and the CLI).
        environ: the environment used for ``${VAR}`` interpolation (defaults to ``os.environ``).

    Raises:
        ConfigError: unknown environment, unknown keys, bad values or unset variables.
    """
    environ = os.environ if environ is None else environ
    env = env or environ.get(ENV_VAR) or DEFAULT_ENV
    folder = find_conf_dir(conf_dir, environ)
    base_file, env_file = folder / "base.yaml", folder / f"{env}.yaml"
    if not env_file.is_file():
        known = sorted(p.stem for p in folder.glob("*.yaml") if p.stem != "base")
        raise ConfigError(
            f"unknown environment {env!r}: no {env_file} (known: {', '.join(known)}); "
            f"pass --env or set {ENV_VAR}"
        )
    merged = _read_yaml(base_file) if base_file.is_file() else {}
    merged = deep_merge(merged, _read_yaml(env_file))
    if overrides:
        merged = deep_merge(merged, dict(overrides))
    merged["env"] = env
    merged["conf_dir"] = str(folder.resolve())
    interpolated = _interpolate(merged, environ, path="")
    try:
        return Settings.model_validate(interpolated)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, env_file)) from None


def find_conf_dir(conf_dir: str | Path | None, environ: Mapping[str, str]) -> Path:
    if conf_dir is None and environ.get(CONF_DIR_VAR):
        conf_dir = environ[CONF_DIR_VAR]
    if conf_dir is not None:
        folder = Path(conf_dir)
        if not folder.is_dir():
            raise ConfigError(
                f"config folder {folder} does not exist (set --conf-dir or {CONF_DIR_VAR})"
            )
        return folder
    for parent in [Path.cwd(), *Path.cwd().parents]:
        if (parent / "conf" / "base.yaml").is_file():
            return parent / "conf"
    beside_package = Path(__file__).resolve().parent.parent / "conf"
    if (beside_package / "base.yaml").is_file():
        return beside_package
    raise ConfigError(f"no conf/base.yaml found above {Path.cwd()}; set {CONF_DIR_VAR}")


def deep_merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """Overlay wins key by key; nested mappings are merged, everything else replaced."""
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level, not {type(data).__name__}")
    return data


def _interpolate(value: Any, environ: Mapping[str, str], path: str) -> Any:
    if isinstance(value, dict):
        return {
            k: _interpolate(v, environ, f"{path}.{k}" if path else str(k)) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_interpolate(v, environ, f"{path}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        raise ConfigError(
            f"config key {path!r} needs environment variable {name}, which is not set; "
            f"export {name}=… (or give a default with ${{{name}:-value}})"
        )

    return _INTERPOLATION.sub(replace, value)


def _explain(exc: ValidationError, env_file: Path) -> str:
    lines = [f"invalid configuration (base.yaml + {env_file.name}):"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key; remove it or check its spelling")
        else:
            lines.append(f"  {key}: {err['msg']}")
    return "\n".join(lines)


def _join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])
