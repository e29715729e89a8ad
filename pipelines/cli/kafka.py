"""``lakehouse``: The embedded Kafka broker and topic inspection."""

from __future__ import annotations

import json
import signal
import sys
import threading
from dataclasses import asdict
from typing import Annotated

import typer
from rich.table import Table

from pipelines.cli.common import (
    EnvOption,
    JsonOption,
    app,
    friendly_errors,
    out,
)
from pipelines.kafka.topics import topic_counts
from pipelines.runtime import lakehouse
from pipelines.streaming.kafka import (
    EmbeddedKafkaError,
    KafkaUnavailableError,
    embedded_broker,
    embedded_data_dir,
    write_embedded_state,
)

kafka_app = typer.Typer(
    help="The embedded Kafka broker and topic inspection.", no_args_is_help=True
)
app.add_typer(kafka_app, name="kafka")


# -- kafka ------------------------------------------------------------------------------------
@kafka_app.command("serve")
@friendly_errors
def kafka_serve(
    env: EnvOption = None,
    brokers: Annotated[
        int,
        typer.Option(
            "--brokers",
            help="1, or 3 for a replicated cluster (replication factor 3, min.insync.replicas 2).",
        ),
    ] = 1,
) -> None:
    """Run the embedded Kafka broker (Apache Kafka, KRaft) on 127.0.0.1 until Ctrl-C.

    Topics and messages live in <storage root>/_kafka and survive a restart. Other commands with
    the same --env find the broker automatically (kafka.bootstrap_servers: embedded).
    """
    if brokers not in (1, 3):
        raise typer.BadParameter("must be 1 or 3", param_hint="--brokers")
    lake = lakehouse(env)
    settings = lake.settings
    data_dir = embedded_data_dir(settings)

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt  # SIGTERM stops the broker like Ctrl-C does

    previous = signal.signal(signal.SIGTERM, interrupt)
    idle = threading.Event()
    try:
        out.print(f"starting {brokers} embedded Kafka broker(s), data in {data_dir} …")
        sys.stdout.flush()
        with embedded_broker(settings, num_brokers=brokers, data_dir=data_dir) as broker:
            state = write_embedded_state(settings, broker.bootstrap_servers)
            out.print(
                f"embedded Kafka broker listening on [bold]{broker.bootstrap_servers}[/] "
                f"(started in {broker.start_seconds:.1f}s)"
            )
            out.print(f"  (address recorded in {state}; Ctrl-C to stop)")
            out.print(
                f"  export KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap_servers}", highlight=False
            )
            sys.stdout.flush()
            try:
                while broker.running:
                    idle.wait(1.0)  # until Ctrl-C / SIGTERM, or a broker JVM dies
                logs = ", ".join(str(f) for f in broker.log_files)
                raise KafkaUnavailableError(
                    f"the embedded Kafka broker stopped unexpectedly; see {logs}"
                )
            finally:
                state.unlink(missing_ok=True)
    except KeyboardInterrupt:
        out.print("embedded Kafka broker stopped")
    except EmbeddedKafkaError as exc:
        raise KafkaUnavailableError(str(exc)) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


@kafka_app.command("topics")
@friendly_errors
def kafka_topics(env: EnvOption = None, as_json: JsonOption = False) -> None:
    """List topics with their partitions and message counts (high - low watermark)."""
    lake = lakehouse(env)
    servers = lake.kafka_bootstrap()
    rows = [asdict(count) for count in topic_counts(lake.settings, servers)]
    if as_json:
        print(json.dumps({"bootstrap_servers": servers, "topics": rows}))
        return
    table = Table("topic", "partitions", "messages", title=f"Kafka at {servers}")
    for row in rows:
        table.add_row(row["topic"], str(row["partitions"]), f"{row['messages']:,}")
    out.print(table)
