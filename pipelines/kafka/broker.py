"""The embedded Kafka broker: real Apache Kafka (KRaft) JVMs on 127.0.0.1, for local runs and tests.

Each broker is one ``java -cp <broker jars> kafka.Kafka server.properties`` process in combined
mode (broker and controller in one JVM); the controllers form a static quorum of every node. The
jars are the ``broker`` set of ``pipelines.jvm`` (``make`` resolves them once). Real brokers are
set with ``kafka.bootstrap_servers``; this one is for local runs and tests only.

What a data folder holds::

    cluster.json                  cluster id, ports, and the pids of the running JVMs
    broker-<id>/server.properties the broker's config (rewritten on every start)
    broker-<id>/broker.log        everything the JVM prints: log4j2 at WARN, stdout, stderr
    broker-<id>/data/             partitions and the KRaft metadata log

A broker started again on the same folder keeps its topics and messages.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from pipelines.jvm import JarsMissingError, jar_set

log = logging.getLogger(__name__)

SUPPORTED_BROKER_COUNTS = (1, 3)
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 20.0
FORMAT_TIMEOUT_S = 60.0
CLUSTER_FILE = "cluster.json"

# A small heap is plenty for local data. C1 only (TieredStopAtLevel=1) starts the JVM faster on
# slow cores; the broker mostly moves bytes, so C2's peak speed matters little here.
JVM_OPTIONS = (
    "-Xms256m",
    "-Xmx512m",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:TieredStopAtLevel=1",
    "-Djava.awt.headless=true",
)
# StorageTool runs for a second: no need for more than the serial collector and C1.
FORMAT_JVM_OPTIONS = ("-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1")

# log4j2 to stdout, which is the broker's log file: warnings and errors only.
_LOG4J2 = """\
status = error
appender.out.type = Console
appender.out.name = out
appender.out.target = SYSTEM_OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n%ex
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = out
"""


class EmbeddedKafkaError(RuntimeError):
    """The embedded broker could not start (the message names the cause and the fix)."""


@dataclass(frozen=True)
class _Node:
    """One broker+controller JVM: its id, ports and folder."""

    node_id: int
    broker_port: int
    controller_port: int
    folder: Path

    @property
    def config(self) -> Path:
        return self.folder / "server.properties"

    @property
    def log4j2(self) -> Path:
        return self.folder / "log4j2.properties"

    @property
    def log_file(self) -> Path:
        return self.folder / "broker.log"

    @property
    def log_dir(self) -> Path:
        return self.folder / "data"

    @property
    def formatted(self) -> bool:
        return (self.log_dir / "meta.properties").is_file()


class EmbeddedKafka:
    """Apache Kafka brokers (KRaft, 1 or 3 nodes) on 127.0.0.1 free ports, in their own JVMs.

    ``topics`` are created on start with ``partitions`` partitions (replication factor 3 and
    ``min.insync.replicas=2`` with 3 brokers); other topics are created on first use with
    ``partitions`` partitions. ``data_dir`` keeps topics and messages across restarts; without it
    the data lives in a temporary folder removed by ``stop()``. Use as a context manager or
    ``start()``/``stop()``; an ``atexit`` hook stops brokers the program forgot.
    """

    def __init__(
        self,
        topics: Sequence[str] = (),
        partitions: int = 16,
        num_brokers: int = 1,
        data_dir: str | Path | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
    ) -> None:
        if num_brokers not in SUPPORTED_BROKER_COUNTS:
            raise ValueError(f"num_brokers must be 1 or 3, not {num_brokers}")
        self._topics = list(dict.fromkeys(topics))
        self._partitions = partitions
        self._num_brokers = num_brokers
        self._data_dir = Path(data_dir).expanduser().resolve() if data_dir is not None else None
        self._start_timeout_s = start_timeout_s
        self._root: Path | None = None
        self._cluster_id = ""
        self._nodes: list[_Node] = []
        self._procs: list[subprocess.Popen[bytes]] = []
        self.bootstrap_servers = ""
        self.start_seconds = 0.0
        self.owner_pid = 0  # the process that started the JVMs

    @property
    def data_dir(self) -> Path | None:
        """The folder in use: ``data_dir``, or the temporary folder while running."""
        return self._root

    @property
    def log_files(self) -> list[Path]:
        """Each broker's log file (JVM output and log4j2 warnings)."""
        return [node.log_file for node in self._nodes]

    @property
    def pids(self) -> list[int]:
        """The broker JVMs' process ids (empty when stopped)."""
        return [proc.pid for proc in self._procs]

    @property
    def running(self) -> bool:
        """True while every broker JVM is alive."""
        return bool(self._procs) and all(proc.poll() is None for proc in self._procs)

    def start(self) -> EmbeddedKafka:
        """Format the storage if new, launch the JVMs, wait until every broker serves metadata,
        then create ``topics``.

        Raises:
            EmbeddedKafkaError: java or the jars are missing, or a broker exited or was not
                ready within ``start_timeout_s`` (the message has the tail of its log).
        """
        if self._procs:
            return self
        started = time.monotonic()
        java = _java()
        classpath = _classpath()
        if self._root is None:
            self._root = self._data_dir or Path(tempfile.mkdtemp(prefix="embedded-kafka-"))
        self._root.mkdir(parents=True, exist_ok=True)
        try:
            self._prepare(self._root)
            new = [node for node in self._nodes if not node.formatted]
            _format(new, java, classpath, self._cluster_id)
            self._launch(java, classpath)
            admin = _admin(self.bootstrap_servers)
            self._wait_until_registered(admin, started)
            self._create_topics(admin, started)
        except BaseException:
            self._stop_jvms()
            raise  # a temporary folder is kept: the error names a log file in it
        self.start_seconds = time.monotonic() - started
        log.info(
            "embedded Kafka (%d broker%s) on %s started in %.1fs",
            self._num_brokers,
            "s" if self._num_brokers > 1 else "",
            self.bootstrap_servers,
            self.start_seconds,
        )
        return self

    def stop(self) -> None:
        """Stop every JVM (SIGTERM for a controlled shutdown, SIGKILL after 20 s) and remove
        the temporary folder, if one was used."""
        self._stop_jvms()
        if self._data_dir is None and self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None
            self._nodes = []

    def restart(self) -> EmbeddedKafka:
        """Stop the JVMs and start them again on the same data (ports kept when still free)."""
        self._stop_jvms()
        return self.start()

    def kill(self, index: int) -> None:
        """SIGKILL broker ``index`` (0-based), as a crash would; ``revive(index)`` brings that one
        back, ``restart()`` all of them."""
        proc = self._procs[index]
        _signal_group(proc, signal.SIGKILL)
        proc.wait()

    def revive(self, index: int) -> float:
        """Start broker ``index`` again after it died (``kill``), on its ports and data, while
        the others keep running; returns the seconds until it was registered again.

        It catches up on what it missed as a follower afterwards (watch the in-sync replicas).

        Raises:
            EmbeddedKafkaError: it is still running, or it did not register within the start
                timeout (the message has the tail of its log).
        """
        if self._procs[index].poll() is None:
            raise EmbeddedKafkaError(
                f"embedded Kafka broker {self._nodes[index].node_id} is running; kill it first"
            )
        started = time.monotonic()
        self._procs[index] = self._spawn(self._nodes[index], _java(), _classpath())
        self._write_state()
        self._wait_until_registered(_admin(self.bootstrap_servers), started)
        return time.monotonic() - started

    def __enter__(self) -> EmbeddedKafka:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- start ---------------------------------------------------------------------------------
    def _prepare(self, root: Path) -> None:
        """Read or create ``cluster.json``, pick the ports and write each node's config."""
        state_file = root / CLUSTER_FILE
        state: dict[str, Any] = json.loads(state_file.read_text()) if state_file.is_file() else {}
        if state:
            recorded = int(state["num_brokers"])
            if recorded != self._num_brokers:
                raise EmbeddedKafkaError(
                    f"{root} holds a {recorded}-broker embedded Kafka cluster, not "
                    f"{self._num_brokers}; start it with {recorded} broker(s), or use another "
                    "data folder (or delete this one to start empty)"
                )
            _reap_orphans(state, root)
        self._cluster_id = str(state.get("cluster_id") or _random_cluster_id())
        ports: list[list[int]] = state.get("ports") or []
        if not ports or not all(_port_free(p) for pair in ports for p in pair):
            ports = _free_port_pairs(self._num_brokers)
        self._nodes = [
            _Node(i + 1, broker_port, controller_port, root / f"broker-{i + 1}")
            for i, (broker_port, controller_port) in enumerate(ports)
        ]
        for node in self._nodes:
            node.folder.mkdir(parents=True, exist_ok=True)
            node.config.write_text(_server_properties(node, self._nodes, self._partitions))
            node.log4j2.write_text(_LOG4J2)
        self.bootstrap_servers = ",".join(f"127.0.0.1:{n.broker_port}" for n in self._nodes)
        self._write_state()

    def _write_state(self) -> None:
        """Record the cluster id, the ports and the running JVMs (with us as their owner)."""
        if self._root is None:
            return
        state = {
            "cluster_id": self._cluster_id,
            "num_brokers": self._num_brokers,
            "ports": [[n.broker_port, n.controller_port] for n in self._nodes],
            "owner_pid": self.owner_pid or os.getpid(),
            "pids": self.pids,
        }
        (self._root / CLUSTER_FILE).write_text(json.dumps(state, indent=2))

    def _launch(self, java: str, classpath: str) -> None:
        for node in self._nodes:
            self._procs.append(self._spawn(node, java, classpath))
        self.owner_pid = os.getpid()
        _LIVE.add(self)
        self._write_state()

    @staticmethod
    def _spawn(node: _Node, java: str, classpath: str) -> subprocess.Popen[bytes]:
        with node.log_file.open("ab") as out:
            out.write(f"--- starting broker {node.node_id} at {time.ctime()}\n".encode())
            out.flush()
            return subprocess.Popen(
                [
                    java,
                    *JVM_OPTIONS,
                    f"-Dlog4j2.configurationFile={node.log4j2}",
                    "-cp",
                    classpath,
                    "kafka.Kafka",
                    str(node.config),
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=node.folder,
                start_new_session=True,  # Ctrl-C reaches us, and we stop the JVMs
            )

    def _wait_until_registered(self, admin: AdminClient, started: float) -> None:
        """Until a metadata request lists every broker (each one registered and unfenced)."""
        wanted = {node.node_id for node in self._nodes}
        while True:
            self._check_alive()
            try:
                if wanted <= set(admin.list_topics(timeout=1.0).brokers):
                    return
            except KafkaException:
                pass  # not listening yet; list_topics waited up to a second
            self._check_deadline(started, "did not register all brokers")

    def _create_topics(self, admin: AdminClient, started: float) -> None:
        """Create ``topics``, then wait until every partition of them has a leader."""
        if not self._topics:
            return
        replicas = 3 if self._num_brokers == 3 else 1
        config = {"min.insync.replicas": "2"} if self._num_brokers == 3 else {}
        pending = list(self._topics)
        while pending:
            new = [NewTopic(t, self._partitions, replicas, config=config) for t in pending]
            failed: dict[str, KafkaError] = {}
            for topic, future in admin.create_topics(new, request_timeout=30.0).items():
                try:
                    future.result()
                except KafkaException as exc:
                    error = exc.args[0]
                    if error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                        continue
                    # A client-side error (a connection replaced while the cluster forms: "broker
                    # handle destroyed") or a retriable one is tried again; others are final.
                    if error.code() >= 0 and not error.retriable():
                        raise EmbeddedKafkaError(
                            f"the embedded Kafka broker could not create topic {topic!r}: "
                            f"{error.str()}"
                        ) from None
                    failed[topic] = error
            pending = list(failed)
            if pending:
                self._check_alive()
                first = next(iter(failed.values())).str()
                self._check_deadline(started, f"could not create topics {pending} ({first})")
                time.sleep(0.2)
        while True:
            self._check_alive()
            try:
                metadata = admin.list_topics(timeout=5.0).topics
            except KafkaException:
                metadata = {}
            if all(
                t in metadata
                and metadata[t].error is None
                and metadata[t].partitions
                and all(p.leader >= 0 for p in metadata[t].partitions.values())
                for t in self._topics
            ):
                return
            self._check_deadline(started, "did not elect leaders for the new topics")

    def _check_alive(self) -> None:
        for node, proc in zip(self._nodes, self._procs, strict=True):
            if proc.poll() is not None:
                raise EmbeddedKafkaError(
                    f"embedded Kafka broker {node.node_id} exited with code {proc.returncode} "
                    f"while starting; its log {node.log_file} ends with:\n{log_tail(node.log_file)}"
                )

    def _check_deadline(self, started: float, what: str) -> None:
        if time.monotonic() - started < self._start_timeout_s:
            return
        node = self._nodes[0]
        raise EmbeddedKafkaError(
            f"embedded Kafka on {self.bootstrap_servers} {what} within "
            f"{self._start_timeout_s:.0f}s; the log {node.log_file} ends with:\n"
            f"{log_tail(node.log_file)}"
        )

    # -- stop ----------------------------------------------------------------------------------
    def _stop_jvms(self) -> None:
        """SIGTERM every JVM, wait up to STOP_TIMEOUT_S for all of them, SIGKILL what is left."""
        procs, self._procs = self._procs, []
        for proc in procs:
            if proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("embedded Kafka JVM %d ignored SIGTERM; killing it", proc.pid)
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
        _LIVE.discard(self)
        self.bootstrap_servers = ""
        if procs and self._root is not None and self._root.is_dir():
            self._write_state()


# Brokers started and not stopped; stopped when the interpreter exits.
_LIVE: set[EmbeddedKafka] = set()


@atexit.register
def _stop_forgotten_brokers() -> None:
    for broker in list(_LIVE):
        if broker.owner_pid == os.getpid():  # not in a forked child that inherited the set
            broker.stop()


def _java() -> str:
    """The ``java`` to run: ``$JAVA_HOME/bin/java``, else the first on PATH."""
    home = os.environ.get("JAVA_HOME")
    if home and os.access(Path(home) / "bin" / "java", os.X_OK):
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise EmbeddedKafkaError(
            "java was not found, and the embedded Kafka broker runs on the JVM: install Java 17 "
            "or newer (e.g. `apt-get install openjdk-17-jre-headless`) or set JAVA_HOME"
        )
    return found


def _classpath() -> str:
    try:
        jars = jar_set("broker")
    except JarsMissingError as exc:
        raise EmbeddedKafkaError(f"the embedded Kafka broker cannot start: {exc}") from None
    return os.pathsep.join(str(jar) for jar in jars.jars)


def _format(nodes: Sequence[_Node], java: str, classpath: str, cluster_id: str) -> None:
    """``kafka.tools.StorageTool format`` each new node's storage (in parallel) for the cluster."""
    running = [
        (
            node,
            subprocess.Popen(
                [
                    java,
                    *FORMAT_JVM_OPTIONS,
                    "-cp",
                    classpath,
                    "kafka.tools.StorageTool",
                    "format",
                    "--cluster-id",
                    cluster_id,
                    "--config",
                    str(node.config),
                    "--ignore-formatted",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            ),
        )
        for node in nodes
    ]
    failed: list[str] = []
    for node, proc in running:
        try:
            output, _ = proc.communicate(timeout=FORMAT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            output, _ = proc.communicate()
        if proc.returncode != 0:
            text = output.decode(errors="replace").strip()
            failed.append(f"broker {node.node_id} ({node.log_dir}):\n{text[-2000:]}")
    if failed:
        raise EmbeddedKafkaError(
            "formatting the embedded Kafka storage failed for " + "\n".join(failed)
        )


def _server_properties(node: _Node, nodes: Sequence[_Node], partitions: int) -> str:
    replicas = 3 if len(nodes) == 3 else 1
    min_isr = 2 if len(nodes) == 3 else 1
    voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in nodes)
    properties: dict[str, object] = {
        "process.roles": "broker,controller",
        "node.id": node.node_id,
        "controller.quorum.voters": voters,
        "listeners": (
            f"PLAINTEXT://127.0.0.1:{node.broker_port},"
            f"CONTROLLER://127.0.0.1:{node.controller_port}"
        ),
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node.broker_port}",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": node.log_dir,
        # Tests produce to topics they never create.
        "auto.create.topics.enable": "true",
        "num.partitions": partitions,
        "default.replication.factor": replicas,
        "min.insync.replicas": min_isr,
        "offsets.topic.replication.factor": replicas,
        "transaction.state.log.replication.factor": replicas,
        "transaction.state.log.min.isr": min_isr,
        "share.coordinator.state.topic.replication.factor": replicas,
        "share.coordinator.state.topic.min.isr": min_isr,
        # Fewer internal partitions than a production cluster: fewer files to open and recover.
        "offsets.topic.num.partitions": 8,
        "transaction.state.log.num.partitions": 4,
        "group.initial.rebalance.delay.ms": 0,
        # Two slow cores are shared with Spark: few threads.
        "num.network.threads": 2,
        "num.io.threads": 4,
        "num.recovery.threads.per.data.dir": 2,
        "background.threads": 4,
    }
    return "".join(f"{key}={value}\n" for key, value in properties.items())


def _admin(bootstrap_servers: str) -> AdminClient:
    """An AdminClient that retries connections quickly and keeps librdkafka's logs quiet."""
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap_servers,
        "reconnect.backoff.ms": 50,
        "reconnect.backoff.max.ms": 500,
        "logger": _quiet,
        "error_cb": _ignore_error,  # "connection refused" until the broker listens
    }
    return AdminClient(conf)


def _ignore_error(_error: KafkaError) -> None:
    return None


class _DebugLogger(logging.Logger):
    """librdkafka logs every refused connection while a broker starts; route them to DEBUG."""

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        log.debug(msg, *args)


_quiet = _DebugLogger("embedded-kafka-admin")


def _reap_orphans(state: dict[str, Any], root: Path) -> None:
    """Kill JVMs of an earlier run whose Python parent died without stopping them; refuse to
    touch a broker that a live process still runs on this folder."""
    alive = [pid for pid in state.get("pids", []) if _is_our_broker(int(pid), root)]
    if not alive:
        return
    owner = int(state.get("owner_pid", -1))
    if owner == os.getpid() or pid_alive(owner):
        raise EmbeddedKafkaError(
            f"an embedded Kafka broker of process {owner} (JVM pids {alive}) already runs on "
            f"{root}; stop it first, or use another data folder"
        )
    log.warning("killing embedded Kafka JVMs %s left running on %s by a crashed run", alive, root)
    for pid in alive:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while any(pid_alive(pid) for pid in alive) and time.monotonic() < deadline:
        time.sleep(0.05)  # not our children: nothing to wait() on


def _is_our_broker(pid: int, root: Path) -> bool:
    """Whether ``pid`` is a live ``kafka.Kafka`` JVM with its config under ``root``."""
    if not pid_alive(pid):
        return False
    done = subprocess.run(
        ["ps", "-ww", "-o", "args=", "-p", str(pid)], capture_output=True, text=True, check=False
    )
    return "kafka.Kafka" in done.stdout and str(root) in done.stdout


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (one we may not signal counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Signal the process group ``proc`` leads (it was started in its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the JVM binds
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port_pairs(count: int) -> list[list[int]]:
    """``count`` distinct (broker, controller) port pairs on 127.0.0.1 nothing listens on."""
    probes = [socket.socket() for _ in range(2 * count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        ports = [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()
    return [[ports[2 * i], ports[2 * i + 1]] for i in range(count)]


def _random_cluster_id() -> str:
    """A Kafka cluster id (a UUID in URL-safe base64), never starting with '-' (read as a flag)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def log_tail(path: Path, lines: int = 25) -> str:
    """The last ``lines`` lines of a log, Java stack frames left out (the messages matter)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    kept = [
        line for line in text.strip().splitlines() if not line.lstrip().startswith(("at ", "... "))
    ]
    return "\n".join(kept[-lines:]) or "(empty)"
