"""Processes the end-to-end tests run: a moto S3 server and `shale` nodes, or (as the
reference the tests are validated against) an Apache Kafka broker.

Used by conftest.py (fixtures) and by scripts/crash-check.py. Every process is started in
its own session and killed on teardown (and at interpreter exit, as a safety net).
"""

from __future__ import annotations

import atexit
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import kproto

REPO = Path(__file__).resolve().parents[2]

_LIVE: set[subprocess.Popen] = set()


def _kill_all_at_exit():
    for p in list(_LIVE):
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass


atexit.register(_kill_all_at_exit)


def _ephemeral_low() -> int:
    try:
        lo = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        lo = 32768
    return lo if lo > 11000 else 32768


def free_port() -> int:
    """A port free on 127.0.0.1, below the kernel's ephemeral range: a port in that range
    can become the local end of some client's connection before the broker binds it (or
    binds it again after a kill -9), and the bind then fails with "Address already in use"."""
    lo = _ephemeral_low()
    for _ in range(200):
        p = random.randrange(10000, lo)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                continue
            return p
    raise RuntimeError("no free port below the ephemeral range")


def shale_bin() -> Path:
    p = Path(os.environ.get("SHALE_BIN") or REPO / "target" / "release" / "shale")
    if not (p.is_file() and os.access(p, os.X_OK)):
        raise RuntimeError(f"no shale binary at {p}: run `cargo build --release -p shale` or set SHALE_BIN")
    return p


def _spawn(args, log_path: Path, env=None) -> subprocess.Popen:
    log = open(log_path, "ab")
    try:
        p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                             env=env, start_new_session=True)
    finally:
        log.close()
    _LIVE.add(p)
    return p


def _stop(p: subprocess.Popen | None, sig=signal.SIGKILL, timeout=10.0):
    if p is None:
        return None
    if p.poll() is None:
        try:
            os.killpg(p.pid, sig)
        except OSError:
            pass
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
    _LIVE.discard(p)
    return p.returncode


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def tail(path: Path, lines: int = 200) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"({path} does not exist)"
    return _ANSI.sub("", "\n".join(text.splitlines()[-lines:]))


# ---------------------------------------------------------------------------------------


class MotoServer:
    """`moto_server -H 127.0.0.1 -p PORT`: a real S3 API server, in memory."""

    access_key = "test"
    secret_key = "test"
    region = "us-east-1"

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = None
        self.proc = None
        self.log = self.workdir / "moto.log"
        self._s3 = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> "MotoServer":
        exe = shutil.which("moto_server")
        cmd = [exe] if exe else [sys.executable, "-m", "moto.server"]
        self.port = free_port()
        self.proc = _spawn(cmd + ["-H", "127.0.0.1", "-p", str(self.port)], self.log)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.proc.returncode}:\n{tail(self.log)}")
            try:
                with urllib.request.urlopen(self.endpoint + "/", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"moto_server not ready after {timeout}s:\n{tail(self.log)}")
            time.sleep(0.1)

    def stop(self):
        _stop(self.proc)

    @property
    def s3(self):
        if self._s3 is None:
            import boto3
            from botocore.config import Config

            self._s3 = boto3.client(
                "s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                aws_secret_access_key=self.secret_key, region_name=self.region,
                config=Config(retries={"max_attempts": 3}))
        return self._s3

    def create_bucket(self, name: str | None = None) -> str:
        name = name or f"shale-{uuid.uuid4().hex[:12]}"
        self.s3.create_bucket(Bucket=name)
        return name

    def objects(self, bucket: str, prefix: str = "") -> dict[str, int]:
        """Every object in the bucket: key -> size."""
        out = {}
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for o in page.get("Contents", []):
                out[o["Key"]] = o["Size"]
        return out


# ---------------------------------------------------------------------------------------


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    return json.dumps(str(v))  # a TOML basic string


class Shale:
    """One `shale` process: `serve` with a TOML config (S3 via moto, or local objects), or
    `dev`. Keeps its data dir and port across restarts."""

    # Settings every test broker gets unless the test overrides them.
    DEFAULTS = {
        "node.id": 1,
        "wal.batch.interval.ms": 20,
    }

    def __init__(self, workdir: Path, mode: str = "serve", moto: MotoServer | None = None,
                 bucket: str | None = None, settings: dict | None = None, env: dict | None = None,
                 name: str = "shale", protocol: str = "PLAINTEXT"):
        assert mode in ("serve", "dev")
        self.name = name
        self.mode = mode
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.workdir / "data"
        self.port = free_port()
        # A listener that is not PLAINTEXT cannot be probed by kproto: readiness is then the
        # start banner's `bootstrap:` line in the log.
        self.protocol = protocol
        self.moto = moto
        self.bucket = bucket
        self.settings = dict(self.DEFAULTS)
        if mode == "serve":
            self.settings.update({
                "listeners": f"{protocol}://127.0.0.1:{self.port}",
                "data.dir": str(self.data_dir),
            })
            if moto is not None:
                self.bucket = bucket or moto.create_bucket()
                self.settings.update({
                    "object.store": "s3",
                    "s3.endpoint": moto.endpoint,
                    "s3.bucket": self.bucket,
                    "s3.region": moto.region,
                    "s3.access.key.id": moto.access_key,
                    "s3.secret.access.key": moto.secret_key,
                })
            else:
                self.settings["object.store"] = "local"
        self.settings.update(settings or {})
        self.extra_env = dict(env or {})
        self.log = self.workdir / f"{name}.log"
        self.config_path = self.workdir / "shale.toml"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _env(self):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("SHALE_") and not (k.startswith("AWS_") and k != "AWS_CA_BUNDLE")}
        env.setdefault("SHALE_LOG", os.environ.get("SHALE_TEST_LOG", "info"))
        env["RUST_BACKTRACE"] = "1"
        env["NO_COLOR"] = "1"
        if self.mode == "dev":
            # `shale dev` takes the same settings from SHALE_* variables.
            for k, v in self.settings.items():
                env["SHALE_" + k.upper().replace(".", "_")] = (
                    ("true" if v else "false") if isinstance(v, bool) else str(v))
        env.update(self.extra_env)
        return env

    def command(self):
        if self.mode == "serve":
            self.config_path.write_text("".join(
                f"{json.dumps(k)} = {_toml_value(v)}\n" for k, v in self.settings.items()))
            return [str(shale_bin()), "serve", "--config", str(self.config_path)]
        return [str(shale_bin()), "dev", "--data-dir", str(self.data_dir), "--port", str(self.port)]

    def start(self, wait: bool = True, timeout: float = 60.0) -> "Shale":
        assert not self.running(), "already running"
        cmd = self.command()
        self.starts += 1
        with open(self.log, "ab") as f:
            f.write(f"\n===== start #{self.starts}: {' '.join(cmd)}\n".encode())
        self.proc = _spawn(cmd, self.log, env=self._env())
        if wait:
            self.wait_ready(timeout)
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float = 60.0):
        """Until the port accepts connections and ApiVersions + Metadata are answered."""
        deadline = time.monotonic() + timeout
        last = None
        if self.protocol != "PLAINTEXT":
            return self._wait_banner(deadline)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode} while starting:\n{tail(self.log, 80)}")
            try:
                with kproto.Conn("127.0.0.1", self.port, timeout=5) as c:
                    err, versions = kproto.api_versions(c)
                    if err == 0 and kproto.METADATA in versions:
                        md = kproto.metadata(c, version=1)
                        if any(b[2] == self.port for b in md["brokers"]):
                            return
                        last = f"metadata lists no broker on port {self.port}: {md['brokers']}"
                    else:
                        last = f"ApiVersions error {err}"
            except (OSError, kproto.Closed, ValueError, AssertionError) as e:
                last = repr(e)
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout}s ({last}):\n{tail(self.log, 80)}")
            time.sleep(0.1)

    def _wait_banner(self, deadline: float):
        want = f"bootstrap: 127.0.0.1:{self.port}"
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode} while starting:\n{tail(self.log, 80)}")
            text = self.log.read_text(errors="replace") if self.log.exists() else ""
            # Each start appends to the log: count banners, not just find one.
            if text.count(want) >= self.starts:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} printed no banner:\n{tail(self.log, 80)}")
            time.sleep(0.1)

    def kill9(self):
        """SIGKILL, no chance to flush anything."""
        assert self.running(), "not running"
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        _LIVE.discard(self.proc)

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait for the exit; returns the exit status (kills -9 and raises when
        the process does not exit within `timeout`)."""
        assert self.running(), "not running"
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _stop(self.proc)
            raise AssertionError(f"{self.name} did not exit within {timeout}s of SIGTERM")
        _LIVE.discard(self.proc)
        return rc

    def restart(self, timeout: float = 60.0) -> "Shale":
        """Starts again on the same port, data dir and bucket (after kill9/terminate)."""
        if self.running():
            self.terminate()
        return self.start(timeout=timeout)

    def stop(self):
        """Teardown: kill whatever is still running."""
        _stop(self.proc)

    def log_tail(self, lines: int = 200) -> str:
        return tail(self.log, lines)

    def objects(self) -> dict[str, int]:
        """The objects this node's bucket holds (S3 mode)."""
        assert self.moto is not None and self.bucket
        return self.moto.objects(self.bucket)


def cluster_nodes(workdir: Path, moto: MotoServer, count: int = 3, settings: dict | None = None) -> list[Shale]:
    """`count` `shale serve` nodes (not started) sharing one new bucket, node ids 1..count,
    every one a voter of the metadata quorum (a PLAINTEXT and a CONTROLLER listener each;
    `controller.quorum.voters` lists them all), plus `settings` on every node. Node i works
    under workdir/n{i}, named shale{i}."""
    bucket = moto.create_bucket()
    controllers = [free_port() for _ in range(count)]
    voters = ",".join(f"{i + 1}@127.0.0.1:{p}" for i, p in enumerate(controllers))
    nodes = []
    for i in range(count):
        n = Shale(Path(workdir) / f"n{i + 1}", moto=moto, bucket=bucket, name=f"shale{i + 1}",
                  settings={"node.id": i + 1, "controller.quorum.voters": voters, **(settings or {})})
        n.settings["listeners"] = (f"PLAINTEXT://127.0.0.1:{n.port},"
                                   f"CONTROLLER://127.0.0.1:{controllers[i]}")
        nodes.append(n)
    return nodes


def start_cluster(nodes: list[Shale], timeout: float = 90.0) -> list[Shale]:
    """Starts the nodes together (the lowest id initializes the quorum, the others wait to
    hear from it) and waits until each answers Metadata listing itself."""
    for n in nodes:
        n.start(wait=False)
    for n in nodes:
        n.wait_ready(timeout)
    return nodes


# ---------------------------------------------------------------------------------------


def java_classpath(pom_dir: Path) -> str | None:
    """`target/classpath.txt` written by `mvn package` in pom_dir (tests/java,
    tests/java/reference), or None when that project is not built."""
    f = Path(pom_dir) / "target" / "classpath.txt"
    return f.read_text().strip() if f.is_file() else None


def kafka_tool(main_class: str, *args, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """One run of an Apache Kafka command-line tool as its bin/kafka-*.sh script runs it:
    `java -cp <tests/java/tools classpath> main_class args...`, e.g.
    org.apache.kafka.tools.TopicCommand (kafka-topics.sh), org.apache.kafka.tools.AclCommand
    (kafka-acls.sh), kafka.admin.ConfigCommand (kafka-configs.sh). Its log goes to stderr at
    WARN (tests/java/tools/log4j2.properties), so does the JVM's. Returns the finished process
    (returncode, text stdout and stderr); raises RuntimeError when tests/java/tools is not built.

    The first run of a tool dumps the classes it loaded into a CDS archive under target/ (per
    main class, classpath and java), which its later runs map: about half of the start-up time."""
    import hashlib
    tools = REPO / "tests" / "java" / "tools"
    cp = java_classpath(tools)
    if cp is None:
        raise RuntimeError(f"no Kafka tools classpath at {tools}/target: run scripts/install-test-deps.sh")
    java = shutil.which("java") or "java"
    key = hashlib.sha256(f"{os.path.realpath(java)}\0{cp}\0{main_class}".encode()).hexdigest()[:16]
    archive = tools / "target" / f"cds-{key}.jsa"
    dump = archive.with_name(f"{archive.name}.{os.getpid()}.tmp")
    cds = f"-XX:SharedArchiveFile={archive}" if archive.is_file() else f"-XX:ArchiveClassesAtExit={dump}"
    cmd = [java, "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", cds,
           "-Xlog:disable", "-Xlog:all=warning:stderr", "-cp", cp,
           f"-Dlog4j2.configurationFile={tools / 'log4j2.properties'}", main_class, *map(str, args)]
    try:
        return subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    finally:
        if dump.is_file():
            os.replace(dump, archive)


KAFKA_REFERENCE = REPO / "tests" / "java" / "reference"


class KafkaBroker:
    """The reference: one Apache Kafka 4.x broker in KRaft combined mode (broker and
    controller in one JVM, `kafka.Kafka` on the classpath that tests/java/reference
    resolves), on loopback. The same lifecycle as Shale: start / kill9 / terminate /
    restart keep its port and log dir. Every request is logged (kafka.request.logger at
    DEBUG) to `request.log`; requests() reads it back."""

    # Broker settings of a single-node cluster: internal topics with one replica.
    DEFAULTS = {
        "process.roles": "broker,controller",
        "node.id": 1,
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "offsets.topic.replication.factor": 1,
        "transaction.state.log.replication.factor": 1,
        "transaction.state.log.min.isr": 1,
        "share.coordinator.state.topic.replication.factor": 1,
        "group.initial.rebalance.delay.ms": 0,
    }
    JVM = ["-Xms256m", "-Xmx768m", "-XX:+UseG1GC"]

    def __init__(self, workdir: Path, settings: dict | None = None, name: str = "kafka"):
        self.name = name
        # Shale.wait_ready reads it; the reference always serves plaintext.
        self.protocol = "PLAINTEXT"
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.workdir / "data"
        self.port = free_port()
        self.controller_port = free_port()
        self.settings = dict(self.DEFAULTS)
        self.settings.update({
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "log.dirs": str(self.data_dir),
        })
        self.settings.update(settings or {})
        self.log = self.workdir / f"{name}.log"
        self.request_log = self.workdir / "request.log"
        self.config_path = self.workdir / "server.properties"
        self.log4j_path = self.workdir / "log4j2.properties"
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.moto = None
        self.bucket = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @staticmethod
    def classpath() -> str:
        cp = java_classpath(KAFKA_REFERENCE)
        if cp is None:
            raise RuntimeError(f"no Apache Kafka classpath at {KAFKA_REFERENCE}/target: run "
                               "`SHALE_TEST_BROKER=kafka scripts/install-test-deps.sh`")
        return cp

    def _java(self, main: str, *args) -> list[str]:
        return ["java", *self.JVM, "-cp", self.classpath(),
                f"-Dlog4j2.configurationFile={self.log4j_path}", f"-Dkafka.logs.dir={self.workdir}",
                main, *args]

    def _write_config(self):
        self.config_path.write_text("".join(f"{k}={v}\n" for k, v in self.settings.items()))
        self.log4j_path.write_text(
            "status = warn\n"
            "appender.out.type = Console\nappender.out.name = out\n"
            "appender.out.layout.type = PatternLayout\nappender.out.layout.pattern = [%d] %p %m (%c)%n\n"
            "appender.req.type = File\nappender.req.name = req\n"
            f"appender.req.fileName = {self.request_log}\n"
            "appender.req.layout.type = PatternLayout\nappender.req.layout.pattern = %m%n\n"
            "rootLogger.level = info\nrootLogger.appenderRef.out.ref = out\n"
            "logger.req.name = kafka.request.logger\nlogger.req.level = debug\n"
            "logger.req.additivity = false\nlogger.req.appenderRef.req.ref = req\n")

    def _format(self):
        """kafka-storage format: a cluster id and the bootstrap metadata, once."""
        cluster_id = subprocess.run(self._java("kafka.tools.StorageTool", "random-uuid"), check=True,
                                    capture_output=True, text=True).stdout.strip().splitlines()[-1]
        r = subprocess.run(self._java("kafka.tools.StorageTool", "format", "-t", cluster_id,
                                      "-c", str(self.config_path)), capture_output=True, text=True)
        with open(self.log, "a") as f:
            f.write(f"===== format: {r.stdout}{r.stderr}\n")
        if r.returncode != 0:
            raise RuntimeError(f"kafka-storage format failed ({r.returncode}): {r.stdout}{r.stderr}")

    def start(self, wait: bool = True, timeout: float = 90.0) -> "KafkaBroker":
        assert not self.running(), "already running"
        self._write_config()
        if not (self.data_dir / "meta.properties").exists():
            self._format()
        cmd = self._java("kafka.Kafka", str(self.config_path))
        self.starts += 1
        with open(self.log, "ab") as f:
            f.write(f"\n===== start #{self.starts}: {' '.join(cmd)}\n".encode())
        self.proc = _spawn(cmd, self.log)
        if wait:
            self.wait_ready(timeout)
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    wait_ready = Shale.wait_ready
    kill9 = Shale.kill9
    terminate = Shale.terminate
    stop = Shale.stop
    log_tail = Shale.log_tail

    def restart(self, timeout: float = 90.0) -> "KafkaBroker":
        if self.running():
            self.terminate()
        return self.start(timeout=timeout)

    def requests(self) -> list[dict]:
        """Every request logged so far: {"client_id", "api", "version", "request"}."""
        out = []
        try:
            lines = self.request_log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return out
        for line in lines:
            i = line.find("{")
            if not line.startswith("Completed request:") or i < 0:
                continue
            try:
                d = json.loads(line[i:])
            except ValueError:
                continue
            h = d.get("requestHeader", {})
            out.append({"client_id": h.get("clientId"), "api": h.get("requestApiKeyName"),
                        "version": h.get("requestApiVersion"), "request": d.get("request")})
        return out


def reference_broker() -> bool:
    """SHALE_TEST_BROKER=kafka: the fixtures start Apache Kafka instead of Shale."""
    return os.environ.get("SHALE_TEST_BROKER", "shale") == "kafka"
