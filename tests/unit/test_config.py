from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.collector.access import WriteKeys
from pipelines.config import ConfigError, load_settings, sql_interval

BASE = """
storage:
  root: /data/base
kafka:
  bootstrap_servers: base:9092
  consumer:
    max_offsets_per_trigger: 100
    poll_timeout_s: 5
spark:
  shuffle_partitions: 8
"""


@pytest.fixture
def conf_dir(tmp_path: Path) -> Path:
    (tmp_path / "base.yaml").write_text(BASE)
    (tmp_path / "dev.yaml").write_text(
        "storage:\n  root: ${DATA_ROOT:-/data/dev}\n"
        "kafka:\n  consumer:\n    max_offsets_per_trigger: 7\n"
    )
    (tmp_path / "secure.yaml").write_text(
        "kafka:\n  security:\n    protocol: SASL_SSL\n    sasl_password: ${KAFKA_PASSWORD}\n"
    )
    (tmp_path / "typo.yaml").write_text("kafka:\n  consumer:\n    max_ofsets_per_trigger: 7\n")
    return tmp_path


def test_env_file_overlays_base_key_by_key(conf_dir: Path) -> None:
    settings = load_settings("dev", conf_dir=conf_dir, environ={})
    assert settings.env == "dev"
    assert settings.storage.root == "/data/dev"  # env file wins
    assert settings.kafka.consumer.max_offsets_per_trigger == 7  # env file wins, nested
    assert settings.kafka.consumer.poll_timeout_s == 5  # sibling from base kept
    assert settings.kafka.bootstrap_servers == "base:9092"  # untouched base key kept
    assert settings.spark.shuffle_partitions == 8


def test_overrides_win_over_env_file(conf_dir: Path) -> None:
    settings = load_settings(
        "dev",
        conf_dir=conf_dir,
        overrides={"kafka": {"consumer": {"max_offsets_per_trigger": 3}}},
        environ={},
    )
    assert settings.kafka.consumer.max_offsets_per_trigger == 3
    assert settings.kafka.consumer.poll_timeout_s == 5


def test_env_variables_are_interpolated_with_defaults(conf_dir: Path) -> None:
    assert (
        load_settings("dev", conf_dir=conf_dir, environ={"DATA_ROOT": "/mnt/x"}).storage.root
        == "/mnt/x"
    )
    assert load_settings("dev", conf_dir=conf_dir, environ={}).storage.root == "/data/dev"


def test_environment_selected_by_variable(conf_dir: Path) -> None:
    assert load_settings(conf_dir=conf_dir, environ={"LAKEHOUSE_ENV": "dev"}).env == "dev"


def test_unknown_key_is_rejected_with_its_path(conf_dir: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings("typo", conf_dir=conf_dir, environ={})
    assert "kafka.consumer.max_ofsets_per_trigger: unknown key" in str(info.value)


def test_missing_secret_names_the_key_and_variable(conf_dir: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings("secure", conf_dir=conf_dir, environ={})
    message = str(info.value)
    assert "kafka.security.sasl_password" in message
    assert "KAFKA_PASSWORD" in message


def test_secret_is_kept_out_of_reprs(conf_dir: Path) -> None:
    settings = load_settings("secure", conf_dir=conf_dir, environ={"KAFKA_PASSWORD": "hunter2"})
    assert "hunter2" not in repr(settings)
    assert settings.kafka.security.client_config()["sasl.password"] == "hunter2"


def test_unknown_environment_lists_the_known_ones(conf_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown environment 'nope'.*known: dev, secure, typo"):
        load_settings("nope", conf_dir=conf_dir, environ={})


def test_bad_value_is_explained(conf_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"streaming.trigger.interval: .*not a duration"):
        load_settings(
            "dev",
            conf_dir=conf_dir,
            overrides={"streaming": {"trigger": {"interval": "soon"}}},
            environ={},
        )


def test_repository_environments_load() -> None:
    conf = Path(__file__).resolve().parents[2] / "conf"
    for env in ("local", "test"):  # the laptop environments need no variables
        assert load_settings(env, conf_dir=conf, environ={}).env == env
    prod_env = {
        "LAKEHOUSE_STORAGE_ROOT": "s3://bucket/lake",
        "KAFKA_BOOTSTRAP_SERVERS": "b1:9093",
        "KAFKA_SASL_USERNAME": "svc",
        "KAFKA_SASL_PASSWORD": "pw",
        "LAKEHOUSE_WRITE_KEY_WEB": "wk-web",
        "LAKEHOUSE_WRITE_KEY_BACKEND": "wk-backend",
    }
    prod = load_settings("prod", conf_dir=conf, environ=prod_env)
    assert prod.storage.root == "s3://bucket/lake"
    assert prod.collector.write_keys["web"].get_secret_value() == "wk-web"
    assert prod.collector.first_write_key() == "wk-web"  # what the demo and benchmark send
    assert "wk-web" not in repr(prod.collector)  # secrets never print
    # Jobs other than the collector run without its keys; the collector refuses an empty one.
    no_keys = {k: v for k, v in prod_env.items() if not k.startswith("LAKEHOUSE_WRITE_KEY")}
    keyless = load_settings("prod", conf_dir=conf, environ=no_keys)

    with pytest.raises(ConfigError, match=r"collector\.write_keys backend, web is empty"):
        WriteKeys(keyless.collector.write_keys)
    dev = load_settings("dev", conf_dir=conf, environ=prod_env)
    assert dev.storage.root == "s3://bucket/lake"
    assert prod.storage.checkpoints == "dbfs:/lakehouse/checkpoints"
    assert prod.streaming.trigger.mode == "processing-time"
    with pytest.raises(ConfigError, match=r"KAFKA_BOOTSTRAP_SERVERS|LAKEHOUSE_STORAGE_ROOT"):
        load_settings("prod", conf_dir=conf, environ={})


def test_checkpoint_root_defaults_under_storage_root(conf_dir: Path) -> None:
    storage = load_settings("dev", conf_dir=conf_dir, environ={}).storage
    assert storage.checkpoints == "/data/dev/_checkpoints"
    assert storage.tables_root == "/data/dev/tables"


def test_an_engines_section_is_refused_with_the_fix(conf_dir: Path) -> None:
    with pytest.raises(ConfigError, match="remove the engines section"):
        load_settings(
            "dev", conf_dir=conf_dir, overrides={"engines": {"delta": "delta-rs"}}, environ={}
        )


@pytest.mark.parametrize(
    ("text", "sql"),
    [
        ("5 minutes", "INTERVAL 300 SECONDS"),
        ("40 days", "INTERVAL 3456000 SECONDS"),  # not 3.456e+06
        ("1.5 seconds", "INTERVAL 1.5 SECONDS"),
        ("250 ms", "INTERVAL 0.25 SECONDS"),
    ],
)
def test_sql_interval_is_plain_digits(text: str, sql: str) -> None:
    assert sql_interval(text) == sql
