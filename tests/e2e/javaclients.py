"""The Java clients of tests/java (kafka-clients and kafka-streams, one jar with subcommands:
see tests/java/src/main/java/shale/javatests/Main.java), run as child processes.

Each subcommand prints JSON lines on stdout: events while it runs, a summary last. Its
stderr (the clients' own log, SLF4J simple at INFO) goes to a file next to the test's
brokers, attached to the failure message when a call fails.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

import harness

JAVA_DIR = harness.REPO / "tests" / "java"
MAIN = "shale.javatests.Main"


class JavaProcess:
    """One running subcommand: its JSON lines as they come (events), kill9(), wait().
    Any client printing JSON lines the same way runs in it too (the kafkajs clients of
    tests/js/clients.js: test_cluster_clients.py)."""

    def __init__(self, args: list[str], log: Path, env: dict | None = None):
        self.args = args
        self.log = log
        with open(log, "ab") as f:
            f.write(f"\n===== {' '.join(args[-6:])}\n".encode())
        err = open(log, "ab")
        try:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=err, start_new_session=True,
                                         env={**os.environ, **(env or {})})
        finally:
            err.close()
        harness._LIVE.add(self.proc)
        self.lines: list[dict] = []
        self._q: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for raw in self.proc.stdout:
            try:
                d = json.loads(raw)
            except ValueError:
                d = {"event": "text", "text": raw.decode(errors="replace").rstrip()}
            self._q.put(d)
        self._q.put(None)

    def _drain(self, block_s: float) -> bool:
        """Moves whatever was printed into self.lines; False once stdout is closed."""
        try:
            d = self._q.get(timeout=block_s)
        except queue.Empty:
            return True
        while True:
            if d is None:
                return False
            self.lines.append(d)
            try:
                d = self._q.get_nowait()
            except queue.Empty:
                return True

    def wait_for(self, pred, timeout: float = 120.0, what: str = "an event") -> dict:
        """The first line (seen before or from now on) for which pred(line) holds."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for d in self.lines[seen:]:
                if pred(d):
                    return d
            seen = len(self.lines)
            if not self._drain(0.2) and self._q.empty():
                for d in self.lines[seen:]:
                    if pred(d):
                        return d
                raise AssertionError(f"{self.args[-6:]} exited ({self.proc.poll()}) without {what}; "
                                     f"last lines {self.lines[-3:]}\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {timeout}s from {self.args[-6:]}; "
                                     f"last lines {self.lines[-3:]}\n{self.log_tail()}")

    def finish(self, timeout: float = 180.0) -> tuple[int, dict | None]:
        """Until the process exits: its exit status and its last line (the summary), or None
        when it printed nothing. Kills it and raises when it does not exit within timeout."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise AssertionError(f"{self.args[-6:]} did not finish in {timeout}s\n{self.log_tail()}")
        harness._LIVE.discard(self.proc)
        while self._drain(1.0):
            pass
        return rc, (self.lines[-1] if self.lines else None)

    def wait(self, timeout: float = 180.0) -> dict:
        """Until the process exits 0; returns its last line (the summary)."""
        rc, last = self.finish(timeout)
        assert rc == 0, f"{self.args[-6:]} exited {rc}; last lines {self.lines[-3:]}\n{self.log_tail()}"
        assert last is not None, f"{self.args[-6:]} printed nothing\n{self.log_tail()}"
        return last

    def kill9(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        harness._LIVE.discard(self.proc)

    def log_tail(self, lines: int = 60) -> str:
        return "--- client log (" + str(self.log) + ") ---\n" + harness.tail(self.log, lines)


class JavaClients:
    def __init__(self, classpath: str, log_dir: Path | None = None):
        self.classpath = f"{JAVA_DIR / 'target' / 'shale-javatests.jar'}:{classpath}"
        self.log_dir = Path(log_dir or JAVA_DIR / "target")

    @classmethod
    def built(cls) -> "JavaClients | None":
        cp = harness.java_classpath(JAVA_DIR)
        if cp is None or not (JAVA_DIR / "target" / "shale-javatests.jar").is_file():
            return None
        return cls(cp)

    def at(self, log_dir: Path) -> "JavaClients":
        """The same clients, logging under log_dir (a test's tmp_path)."""
        c = JavaClients.__new__(JavaClients)
        c.classpath, c.log_dir = self.classpath, Path(log_dir)
        return c

    def spawn(self, *args, log_level: str = "info", env: dict | None = None) -> JavaProcess:
        cmd = ["java", "-Xmx512m", "-cp", self.classpath,
               f"-Dorg.slf4j.simpleLogger.defaultLogLevel={log_level}",
               "-Dorg.slf4j.simpleLogger.showDateTime=true",
               # the request versions a client sends: "Sending PRODUCE request with header ..."
               "-Dorg.slf4j.simpleLogger.log.org.apache.kafka.clients.NetworkClient=debug",
               MAIN, *map(str, args)]
        return JavaProcess(cmd, self.log_dir / f"java-{args[0]}.log", env=env)

    def run(self, *args, timeout: float = 180.0, env: dict | None = None) -> dict:
        """`env`: SHALE_CLIENT_CONFIG names a properties file every client starts from."""
        return self.spawn(*args, env=env).wait(timeout)

    def consume(self, bootstrap: str, topic: str, at_least: int, isolation: str = "read_uncommitted",
                timeout_s: float = 60.0, values: str = "string") -> dict:
        """Every record of every partition up to the end offsets (the LSO under
        read_committed), once it holds at least `at_least`; asserts it got there."""
        out = self.run("consume", bootstrap, topic, at_least, isolation, int(timeout_s * 1000), values,
                       timeout=timeout_s + 60)
        assert out["complete"], f"consume {topic} ({isolation}) got {out['count']} records, " \
                                f"wanted at least {at_least} and the end {out['end_offsets']}"
        return out
