"""A real Apache Kafka broker on 127.0.0.1 for tests, from the jars hack/kafka.sh resolves.

    with kafka_broker(tmp_path) as broker:          # formats, starts, waits; kills at exit
        broker.create_topic("events", partitions=3)
        broker.consume("events", 4)                 # ConsoleConsumer's records, parsed

One combined KRaft node (``process.roles=broker,controller``, no ZooKeeper): a log dir
formatted in ``tmp_path`` with a fresh cluster id (StorageTool ``--standalone``), listeners
on free loopback ports, the heap bounded. Every client here is Kafka's own (TopicCommand,
ConsoleProducer, ConsoleConsumer from the same jars), so nothing of Kustos checks Kustos.

Missing jars or java skip the calling test locally and fail it in CI (``required_binary``).
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cluster import REPO, required_binary, unavailable

from ports import free_port

KAFKA_SH = REPO / "hack" / "kafka.sh"
HEAP = "-Xmx512m"
# ConsoleConsumer's separators: none occurs in a CloudEvents attribute the tests send; a
# header is printed name:value (its default), split at the first ':' (names have none).
FIELD_SEP, HEADER_SEP, HEADER_KV_SEP = "\t", "|", ":"


def kafka_jars() -> Path:
    """The jar directory of hack/kafka.sh (skip locally, fail in CI, when not built)."""
    versions = str(REPO / "hack" / "versions.sh")
    out = subprocess.run(["bash", "-c", '. "$1" && printf %s "$KAFKA_VERSION"', "-", versions],
                         capture_output=True, text=True, check=True)
    jars = Path(subprocess.run(["bash", str(KAFKA_SH), "path"], capture_output=True, text=True,
                               check=True).stdout.strip())
    required_binary(jars / f"kafka_2.13-{out.stdout}.jar", "make tools (hack/kafka.sh build)")
    if shutil.which("java") is None:
        unavailable("java (17+) is not on PATH: the Kafka broker needs it")
    return jars


def cluster_id() -> str:
    """A random KRaft cluster id as Kafka writes them (URL-safe base64 of 16 bytes; Kafka
    never hands out one starting with '-', which its command lines would take for a flag)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


@dataclass
class Record:
    partition: int
    offset: int
    headers: dict[str, str]
    key: str
    value: str


@dataclass
class KafkaBroker:
    jars: Path
    port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, deadline: float = 180) -> None:
        """Start the (formatted) node and wait until it answers metadata requests."""
        assert self.proc is None or self.proc.poll() is not None, "the broker runs"
        with open(self.dir / "broker.log", "ab") as log:
            proc = self.proc = subprocess.Popen(
                ["java", HEAP, "-Xms64m",
                 f"-Dlog4j2.configurationFile={self.dir / 'broker-log4j2.properties'}",
                 "-cp", f"{self.jars}/*", "kafka.Kafka", str(self.dir / "server.properties")],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        # Observed progress: the listener accepts, then Kafka's own admin client gets a
        # metadata answer (the broker has caught up with the controller and is unfenced).
        end = time.monotonic() + deadline

        def alive(what: str) -> None:
            assert proc.poll() is None, (
                f"the broker exited ({proc.returncode}): {self.log_tail()}")
            assert time.monotonic() < end, f"{what} in {deadline}s: {self.log_tail()}"

        while not _port_open(self.port):
            alive("the broker did not listen")
            time.sleep(0.2)
        while True:
            listed = self.java("org.apache.kafka.tools.TopicCommand", "--bootstrap-server",
                               self.bootstrap, "--list", timeout=60)
            if listed.returncode == 0:
                return
            alive(f"no metadata answer ({listed.stderr[-1000:]})")
            time.sleep(0.5)

    def kill(self) -> None:
        """SIGKILL, as a crash: the log dir stays for a restart."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def java(self, main: str, *args: str, timeout: float = 120,
             stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """One of Kafka's command-line tools (a JVM of its own)."""
        return subprocess.run(
            ["java", HEAP, f"-Dlog4j2.configurationFile={self.dir / 'tools-log4j2.properties'}",
             "-cp", f"{self.jars}/*", main, *args],
            input=stdin, capture_output=True, text=True, timeout=timeout)

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / "broker.log").read_text(errors="replace")[-3000:]
        return ""

    def create_topic(self, topic: str, partitions: int) -> None:
        done = self.java("org.apache.kafka.tools.TopicCommand", "--bootstrap-server",
                         self.bootstrap, "--create", "--topic", topic, "--partitions",
                         str(partitions), "--replication-factor", "1")
        assert done.returncode == 0, f"TopicCommand --create {topic}: {done.stderr[-2000:]}"

    def leaders(self, topic: str) -> list[int]:
        """Each partition's leader as Kafka's TopicCommand describes it (-1: none)."""
        done = self.java("org.apache.kafka.tools.TopicCommand", "--bootstrap-server",
                         self.bootstrap, "--describe", "--topic", topic)
        assert done.returncode == 0, f"TopicCommand --describe {topic}: {done.stderr[-2000:]}"
        return [int(line.split("Leader:")[1].split()[0]) for line in done.stdout.splitlines()
                if "Partition:" in line and "Leader:" in line]

    def produce_keyed(self, topic: str, lines: list[tuple[str, str]]) -> None:
        """Keyed records through Kafka's own producer (its default partitioner)."""
        done = self.java("org.apache.kafka.tools.ConsoleProducer", "--bootstrap-server",
                         self.bootstrap, "--topic", topic, "--property", "parse.key=true",
                         "--property", f"key.separator={FIELD_SEP}",
                         stdin="".join(f"{k}{FIELD_SEP}{v}\n" for k, v in lines))
        assert done.returncode == 0, f"ConsoleProducer: {done.stderr[-2000:]}"

    def consume(self, topic: str, count: int, timeout_ms: int = 60000) -> list[Record]:
        """Up to ``count`` records from the beginning, read by Kafka's ConsoleConsumer."""
        props = {"print.partition": "true", "print.offset": "true", "print.headers": "true",
                 "print.key": "true", "key.separator": FIELD_SEP,
                 "headers.separator": HEADER_SEP}
        args = [a for k, v in props.items() for a in ("--property", f"{k}={v}")]
        done = self.java("org.apache.kafka.tools.consumer.ConsoleConsumer", "--bootstrap-server",
                         self.bootstrap, "--topic", topic, "--from-beginning", "--max-messages",
                         str(count), "--timeout-ms", str(timeout_ms), *args,
                         timeout=timeout_ms / 1000 + 60)
        records = []
        for line in done.stdout.splitlines():
            # Partition:P<TAB>Offset:O<TAB>h1=v1|h2=v2<TAB>key<TAB>value (the consumer also
            # prints a notice about its rebalance protocol there)
            if not line.startswith("Partition:"):
                continue
            part, offset, headers, key, value = line.split(FIELD_SEP, 4)
            records.append(Record(
                int(part.removeprefix("Partition:")), int(offset.removeprefix("Offset:")),
                {} if headers == "NO_HEADERS" else
                dict(h.split(HEADER_KV_SEP, 1) for h in headers.split(HEADER_SEP)),
                key, value))
        assert len(records) == count, (
            f"ConsoleConsumer read {len(records)} of {count} records: {done.stderr[-2000:]}")
        return records


def _write_config(d: Path, port: int, controller_port: int) -> Path:
    props = d / "server.properties"
    props.write_text("\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        f"controller.quorum.bootstrap.servers=127.0.0.1:{controller_port}",
        f"log.dirs={d / 'data'}",
        # A producer writes only to topics the test created.
        "auto.create.topics.enable=false",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=1",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "",
    ]))
    # The broker logs at INFO into broker.log (shown when it fails); the tools only warn.
    for name, level in (("broker", "INFO"), ("tools", "WARN")):
        (d / f"{name}-log4j2.properties").write_text("\n".join([
            f"rootLogger.level={level}",
            "rootLogger.appenderRef.out.ref=out",
            "appender.out.type=Console",
            "appender.out.name=out",
            "appender.out.target=SYSTEM_ERR",
            "appender.out.layout.type=PatternLayout",
            "appender.out.layout.pattern=[%d] %p %m (%c)%n",
            "",
        ]))
    return props


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def kafka_broker(tmp: Path, deadline: float = 180) -> Iterator[KafkaBroker]:
    """Format, start and wait for a one-node KRaft cluster; kill it on exit."""
    jars = kafka_jars()
    tmp.mkdir(parents=True, exist_ok=True)
    port, controller_port = free_port(), free_port()
    while controller_port == port:
        controller_port = free_port()
    props = _write_config(tmp, port, controller_port)
    fmt = subprocess.run(
        ["java", HEAP, f"-Dlog4j2.configurationFile={tmp / 'tools-log4j2.properties'}", "-cp",
         f"{jars}/*", "kafka.tools.StorageTool", "format", "--cluster-id", cluster_id(),
         "--config", str(props), "--standalone"],
        capture_output=True, text=True, timeout=120)
    assert fmt.returncode == 0, f"StorageTool format: {fmt.stdout[-1000:]}{fmt.stderr[-2000:]}"
    broker = KafkaBroker(jars, port, tmp, None)
    try:
        broker.start(deadline)
        yield broker
    finally:
        broker.kill()
