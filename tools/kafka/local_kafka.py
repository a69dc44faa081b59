#!/usr/bin/env python3
"""Run a real, local, single-node Apache Kafka 4.1.1 broker (KRaft, broker+controller).

Used by the test suite, the benchmarks and anyone trying streamledger's Kafka mode on
a machine without Kafka.  Needs Java 17+ and Maven (to fetch the jars from Maven
Central once); otherwise stdlib only (confluent-kafka, when importable, is used for
the readiness check).

Command line::

    python tools/kafka/local_kafka.py install
    python tools/kafka/local_kafka.py start [--port 9092] [--data-dir DIR] [--foreground]
    python tools/kafka/local_kafka.py status [--data-dir DIR]
    python tools/kafka/local_kafka.py stop [--data-dir DIR]

Python API::

    from local_kafka import ensure_installed, start_broker
    broker = start_broker(port=None, data_dir=tmp, watchdog_pid=os.getpid())
    broker.bootstrap        # "127.0.0.1:PORT"
    broker.kill()           # SIGKILL (crash fault)
    broker.start_again()    # same data dir, same ports
    broker.stop()

Environment:
    STREAMLEDGER_KAFKA_HOME   install dir (jars in $STREAMLEDGER_KAFKA_HOME/libs);
                              default ~/.cache/streamledger/kafka-4.1.1
    STREAMLEDGER_KAFKA_HEAP   JVM heap options (default "-Xms256m -Xmx1g")
    JAVA_HOME                 Java to use (else `java` on PATH)
    MVN                       Maven executable (else `mvn` on PATH)
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

KAFKA_VERSION = "4.1.1"
TOOLS_DIR = Path(__file__).resolve().parent
POM = TOOLS_DIR / "pom.xml"
LOG4J2_CONFIG = TOOLS_DIR / "log4j2.properties"
DEFAULT_DATA_DIR = Path(".streamledger") / "kafka"
DEFAULT_HEAP = "-Xms256m -Xmx1g"
JVM_OPTS = [
    "-server",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-Djava.awt.headless=true",
]
MARKER_NAME = ".streamledger-installed"
STATE_NAME = "broker.json"
PID_NAME = "broker.pid"
LOG_NAME = "broker.log"
CONFIG_NAME = "server.properties"


class KafkaToolError(RuntimeError):
    """Installing, starting or stopping the local broker failed (message says why)."""


def _say(msg: str, quiet: bool = False) -> None:
    if not quiet:
        print(f"[local-kafka] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- install


def kafka_home() -> Path:
    env = os.environ.get("STREAMLEDGER_KAFKA_HOME")
    if env:
        return Path(env).expanduser().resolve()
    return Path.home() / ".cache" / "streamledger" / f"kafka-{KAFKA_VERSION}"


def libs_dir() -> Path:
    return kafka_home() / "libs"


def _fingerprint() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()


def find_java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    candidates = []
    if java_home:
        candidates.append(str(Path(java_home) / "bin" / "java"))
    which = shutil.which("java")
    if which:
        candidates.append(which)
    for cand in candidates:
        if os.access(cand, os.X_OK):
            return cand
    raise KafkaToolError(
        "Java not found: Kafka 4.1 needs Java 17 or newer. Install it (Debian/Ubuntu: "
        "`apt-get install -y openjdk-17-jre-headless`) or set JAVA_HOME."
    )


def _check_java_version(java: str) -> None:
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KafkaToolError(f"cannot run {java} -version: {exc}") from exc
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not m:
        return  # unknown format: let the JVM complain later
    major = int(m.group(1))
    if major == 1 and m.group(2):
        major = int(m.group(2))
    if major < 17:
        raise KafkaToolError(f"Kafka 4.1 needs Java 17+, but {java} is Java {major}")


def find_maven() -> str:
    mvn = os.environ.get("MVN") or shutil.which("mvn")
    if not mvn:
        raise KafkaToolError(
            "Maven (`mvn`) not found: it is needed once to fetch the Kafka jars from Maven "
            "Central. Install it (Debian/Ubuntu: `apt-get install -y maven`) or set MVN."
        )
    return mvn


def is_installed() -> bool:
    marker = libs_dir() / MARKER_NAME
    try:
        return marker.read_text().strip() == _fingerprint()
    except OSError:
        return False


@contextlib.contextmanager
def _file_lock(path: Path):
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_installed(quiet: bool = False) -> Path:
    """Fetch Kafka and its runtime jars into the cache (once); return the libs dir."""
    libs = libs_dir()
    if is_installed():
        return libs
    find_java()  # fail early and clearly, before a 50 MB download
    mvn = find_maven()
    home = kafka_home()
    with _file_lock(home / ".install.lock"):
        if is_installed():  # another process installed it while we waited
            return libs
        staging = Path(tempfile.mkdtemp(prefix="libs.", dir=home))
        mvn_log = home / "mvn-install.log"
        cmd = [
            mvn, "-B", "-ntp", "-f", str(POM),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
            "-DincludeScope=runtime",
        ]  # fmt: skip
        _say(f"installing Apache Kafka {KAFKA_VERSION} jars (~45 MB from Maven Central)", quiet)
        _say(f"  into {libs}", quiet)
        _say(f"  running: {' '.join(cmd)}  (log: {mvn_log})", quiet)
        t0 = time.monotonic()
        with open(mvn_log, "w") as log:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=str(home),
            )  # fmt: skip
            last = t0
            while proc.poll() is None:
                time.sleep(0.5)
                if time.monotonic() - last >= 10:
                    last = time.monotonic()
                    n = len(list(staging.glob("*.jar")))
                    _say(f"  ... {last - t0:.0f}s elapsed, {n} jars copied so far", quiet)
        if proc.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            tail = _tail(mvn_log, 40)
            raise KafkaToolError(
                f"Maven failed (exit {proc.returncode}) fetching Kafka jars; see {mvn_log}.\n"
                f"Last lines:\n{tail}"
            )
        jars = sorted(p.name for p in staging.glob("*.jar"))
        if not any(j.startswith(f"kafka_2.13-{KAFKA_VERSION}") for j in jars):
            shutil.rmtree(staging, ignore_errors=True)
            raise KafkaToolError(f"Maven finished but kafka_2.13 jar is missing; see {mvn_log}")
        (staging / MARKER_NAME).write_text(_fingerprint() + "\n")
        if libs.exists():
            shutil.rmtree(libs)
        staging.rename(libs)
        _say(f"installed {len(jars)} jars in {time.monotonic() - t0:.1f}s", quiet)
    return libs


# --------------------------------------------------------------------------- helpers


def _tail(path: Path, lines: int = 30) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    return "\n".join(data.splitlines()[-lines:])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _proc_alive(pid: int) -> bool:
    """True if pid is a live (non-zombie) process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True  # no /proc (macOS): trust kill(0)


def _is_kafka_process(pid: int) -> bool:
    """Guard against a stale pid file pointing at an unrelated, reused pid."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return _proc_alive(pid)  # no /proc: best effort
    return b"kafka.Kafka" in cmdline


def _new_cluster_id() -> str:
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _java_cmd(main: str, *args: str) -> list[str]:
    libs = libs_dir()
    heap = os.environ.get("STREAMLEDGER_KAFKA_HEAP", DEFAULT_HEAP).split()
    return [
        find_java(), *heap, *JVM_OPTS,
        f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}",
        "-cp", f"{libs}/*", main, *args,
    ]  # fmt: skip


def server_properties(
    port: int, controller_port: int, log_dir: Path, extra: dict[str, str] | None = None
) -> str:
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(log_dir),
        "num.partitions": "1",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "10",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        # After a SIGKILL the restarted node cannot re-register until the old broker
        # session expires (default 9 s); keep crash-restart tests quick.
        "broker.heartbeat.interval.ms": "500",
        "broker.session.timeout.ms": "3000",
        "auto.create.topics.enable": "false",
        "delete.topic.enable": "true",
        "num.network.threads": "3",
        "num.io.threads": "8",
        "log.retention.hours": "168",
        "log.segment.bytes": str(256 * 1024 * 1024),
    }
    props.update(extra or {})
    lines = [f"# written by tools/kafka/local_kafka.py (Kafka {KAFKA_VERSION})"]
    lines += [f"{k}={v}" for k, v in props.items()]
    return "\n".join(lines) + "\n"


# Detached watchdog: kills the broker when the watched pid (e.g. pytest) goes away,
# so a crashed test run never leaves a broker behind.  Exits when the broker exits.
_WATCHDOG = r"""
import os, signal, sys, time
watched, broker, grace = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        st = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()[0]
        return st not in ("Z", "X")
    except Exception:
        return True
MAIN = b"kafka." + b"Kafka"  # split so that this watchdog's own cmdline never matches
def is_broker(pid):
    try:
        return MAIN in open("/proc/%d/cmdline" % pid, "rb").read().split(b"\0")
    except Exception:
        return alive(pid)
while True:
    if not alive(broker) or not is_broker(broker):
        sys.exit(0)
    if not alive(watched):
        break
    time.sleep(0.5)
try:
    os.kill(broker, signal.SIGTERM)
except ProcessLookupError:
    sys.exit(0)
deadline = time.time() + grace
while time.time() < deadline and alive(broker):
    time.sleep(0.2)
if alive(broker) and is_broker(broker):
    try:
        os.kill(broker, signal.SIGKILL)
    except ProcessLookupError:
        pass
"""


def _spawn_watchdog(watched_pid: int, broker_pid: int, grace: float = 15.0) -> int:
    proc = subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, str(watched_pid), str(broker_pid), str(grace)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True,
    )  # fmt: skip
    return proc.pid


# --------------------------------------------------------------------------- broker


class Broker:
    """A local single-node Kafka broker living in ``data_dir``."""

    def __init__(
        self,
        data_dir: Path,
        port: int,
        controller_port: int,
        cluster_id: str,
        watchdog_pid: int | None = None,
        extra_config: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.controller_port = controller_port
        self.cluster_id = cluster_id
        self.watchdog_pid = watchdog_pid
        self.extra_config = dict(extra_config or {})
        self.pid: int | None = None
        self._proc: subprocess.Popen | None = None

    # -- paths / addresses
    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / LOG_NAME

    @property
    def config_path(self) -> Path:
        return self.data_dir / CONFIG_NAME

    @property
    def pid_path(self) -> Path:
        return self.data_dir / PID_NAME

    @property
    def kafka_log_dir(self) -> Path:
        return self.data_dir / "kraft-logs"

    def __repr__(self) -> str:
        return f"Broker(bootstrap={self.bootstrap!r}, pid={self.pid}, data_dir='{self.data_dir}')"

    # -- persistence
    def _save_state(self) -> None:
        state = {
            "kafka_version": KAFKA_VERSION,
            "port": self.port,
            "controller_port": self.controller_port,
            "cluster_id": self.cluster_id,
            "pid": self.pid,
            "watchdog_pid": self.watchdog_pid,
            "extra_config": self.extra_config,
        }
        (self.data_dir / STATE_NAME).write_text(json.dumps(state, indent=2) + "\n")
        if self.pid is not None:
            self.pid_path.write_text(f"{self.pid}\n")

    @classmethod
    def attach(cls, data_dir: Path | str) -> Broker:
        """The broker described by ``data_dir`` (running or not)."""
        data_dir = Path(data_dir).resolve()
        try:
            state = json.loads((data_dir / STATE_NAME).read_text())
        except (OSError, ValueError) as exc:
            raise KafkaToolError(f"no local broker state in {data_dir}") from exc
        b = cls(
            data_dir,
            state["port"],
            state["controller_port"],
            state["cluster_id"],
            state.get("watchdog_pid"),
            state.get("extra_config"),
        )
        try:
            b.pid = int((data_dir / PID_NAME).read_text().strip())
        except (OSError, ValueError):
            b.pid = state.get("pid")
        return b

    # -- lifecycle
    def is_running(self) -> bool:
        if self.pid is None:
            return False
        if self._proc is not None and self._proc.poll() is not None:
            return False
        return _proc_alive(self.pid) and _is_kafka_process(self.pid)

    def _format_storage(self) -> None:
        if (self.kafka_log_dir / "meta.properties").exists():
            return
        self.kafka_log_dir.mkdir(parents=True, exist_ok=True)
        cmd = _java_cmd(
            "kafka.tools.StorageTool", "format", "--ignore-formatted",
            "-t", self.cluster_id, "-c", str(self.config_path),
        )  # fmt: skip
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise KafkaToolError(
                f"kafka StorageTool format failed (exit {res.returncode}):\n"
                f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
            )

    def _launch(self, foreground: bool = False) -> None:
        if self.is_running():
            raise KafkaToolError(f"a broker is already running from {self.data_dir}: {self}")
        for p in (self.port, self.controller_port):
            if not _port_free(p):
                raise KafkaToolError(
                    f"port {p} on 127.0.0.1 is in use (another broker? try `status`/`stop`, "
                    "or pick another --port)"
                )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            server_properties(
                self.port, self.controller_port, self.kafka_log_dir, self.extra_config
            )
        )
        self._format_storage()
        cmd = _java_cmd("kafka.Kafka", str(self.config_path))
        with open(self.log_path, "ab") as log:
            log.write(f"\n==== {time.strftime('%F %T')} starting: {' '.join(cmd)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(self.data_dir),
                start_new_session=not foreground,
                close_fds=True,
            )
        self.pid = self._proc.pid
        self._save_state()
        if self.watchdog_pid is not None:
            _spawn_watchdog(self.watchdog_pid, self.pid)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until the port accepts connections and a metadata request succeeds."""
        deadline = time.monotonic() + timeout
        admin = None
        try:
            from confluent_kafka.admin import AdminClient  # optional dependency
        except ImportError:
            AdminClient = None  # noqa: N806
        last_err: object = "port not open yet"
        while time.monotonic() < deadline:
            if not self.is_running():
                raise KafkaToolError(
                    f"broker exited during startup; last lines of {self.log_path}:\n"
                    f"{_tail(self.log_path)}"
                )
            if not _port_open(self.port):
                time.sleep(0.2)
                continue
            if AdminClient is None:
                return
            if admin is None:
                admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
            try:
                md = admin.list_topics(timeout=min(5.0, max(0.5, deadline - time.monotonic())))
                if md.brokers:
                    return
                last_err = "metadata has no brokers yet"
            except Exception as exc:  # KafkaException: not ready yet
                last_err = exc
            time.sleep(0.2)
        raise KafkaToolError(
            f"broker not ready after {timeout:.0f}s ({last_err}); last lines of "
            f"{self.log_path}:\n{_tail(self.log_path)}"
        )

    def start_again(self, ready_timeout: float = 60.0) -> Broker:
        """(Re)start on the same data dir and ports, e.g. after :meth:`kill`."""
        self._launch()
        try:
            self.wait_ready(ready_timeout)
        except BaseException:
            self.kill()
            raise
        return self

    def _wait_exit(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None:
                try:
                    self._proc.wait(timeout=0.1)
                    return True
                except subprocess.TimeoutExpired:
                    continue
            if self.pid is None or not _proc_alive(self.pid):
                return True
            time.sleep(0.1)
        return not self.is_running()

    def _signal(self, sig: int) -> None:
        if self.pid is None or not self.is_running():
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL the broker (a crash: no clean shutdown) and wait until it is gone."""
        self._signal(signal.SIGKILL)
        self._wait_exit(30)
        self._wait_ports_released()

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (clean shutdown); SIGKILL if still alive after ``timeout`` seconds."""
        if self.is_running():
            self._signal(signal.SIGTERM)
            if not self._wait_exit(timeout):
                self._signal(signal.SIGKILL)
                self._wait_exit(10)
        self._wait_ports_released()
        with contextlib.suppress(OSError):
            self.pid_path.unlink()

    def _wait_ports_released(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _port_free(self.port) and _port_free(self.controller_port):
                return
            time.sleep(0.1)


def start_broker(
    port: int | None = None,
    data_dir: Path | str | None = None,
    watchdog_pid: int | None = None,
    *,
    ready_timeout: float = 60.0,
    extra_config: dict[str, str] | None = None,
    install: bool = True,
    quiet: bool = True,
    foreground: bool = False,
) -> Broker:
    """Start a broker+controller KRaft node and wait until it serves metadata.

    ``port=None`` picks a free port.  ``data_dir`` defaults to ``./.streamledger/kafka``;
    an existing formatted data dir is reused (same cluster id, topics survive).
    ``watchdog_pid``: when that process exits, a detached watchdog stops the broker.
    """
    if install:
        ensure_installed(quiet=quiet)
    elif not is_installed():
        raise KafkaToolError("Kafka jars not installed: run `local_kafka.py install`")
    data_dir = Path(data_dir if data_dir is not None else DEFAULT_DATA_DIR).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)

    cluster_id = None
    meta = data_dir / "kraft-logs" / "meta.properties"
    if meta.exists():
        m = re.search(r"^cluster\.id=(\S+)", meta.read_text(), re.M)
        cluster_id = m.group(1) if m else None
    prev_ctrl = None
    with contextlib.suppress(KafkaToolError):
        prev = Broker.attach(data_dir)
        if prev.is_running():
            raise KafkaToolError(
                f"a broker is already running from {data_dir} at {prev.bootstrap} "
                f"(pid {prev.pid}); stop it first"
            )
        prev_ctrl = prev.controller_port
    if port is None:
        port = _free_port()
    controller_port = None
    for cand in (prev_ctrl, port + 1):
        if cand and cand != port and _port_free(cand):
            controller_port = cand
            break
    if controller_port is None:
        while (controller_port := _free_port()) == port:
            pass
    broker = Broker(
        data_dir, port, controller_port, cluster_id or _new_cluster_id(),
        watchdog_pid, extra_config,
    )  # fmt: skip
    t0 = time.monotonic()
    broker._launch(foreground=foreground)
    try:
        broker.wait_ready(ready_timeout)
    except BaseException:
        broker.kill()
        raise
    _say(f"broker ready at {broker.bootstrap} in {time.monotonic() - t0:.1f}s", quiet)
    return broker


# --------------------------------------------------------------------------- CLI


def _cmd_install(args: argparse.Namespace) -> int:
    if is_installed():
        print(f"Kafka {KAFKA_VERSION} already installed in {libs_dir()}")
        return 0
    ensure_installed()
    print(f"Kafka {KAFKA_VERSION} installed in {libs_dir()}")
    return 0


def _cmd_start(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir).resolve()
    with contextlib.suppress(KafkaToolError):
        prev = Broker.attach(data_dir)
        if prev.is_running():
            print(f"already running: bootstrap {prev.bootstrap} (pid {prev.pid})")
            print(prev.bootstrap)
            return 0
    broker = start_broker(
        port=args.port, data_dir=data_dir, ready_timeout=args.timeout,
        quiet=False, foreground=args.foreground,
    )  # fmt: skip
    print(f"Kafka {KAFKA_VERSION} broker running (pid {broker.pid}), log: {broker.log_path}",
          file=sys.stderr)  # fmt: skip
    print(broker.bootstrap, flush=True)
    if not args.foreground:
        return 0

    def _term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    try:
        assert broker._proc is not None
        rc = broker._proc.wait()
        print(f"broker exited with code {rc}", file=sys.stderr)
        return rc
    except KeyboardInterrupt:
        print("stopping broker ...", file=sys.stderr)
        broker.stop()
        return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    try:
        broker = Broker.attach(args.data_dir)
    except KafkaToolError:
        print(f"no broker state in {Path(args.data_dir).resolve()}; nothing to stop")
        return 0
    if not broker.is_running():
        print("broker not running")
        with contextlib.suppress(OSError):
            broker.pid_path.unlink()
        return 0
    pid = broker.pid
    broker.stop(timeout=args.timeout)
    print(f"stopped broker (pid {pid})")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    try:
        broker = Broker.attach(args.data_dir)
    except KafkaToolError:
        print(f"not running (no broker state in {Path(args.data_dir).resolve()})")
        return 1
    if broker.is_running():
        ready = _port_open(broker.port)
        print(
            f"running: bootstrap {broker.bootstrap}, pid {broker.pid}, "
            f"{'accepting connections' if ready else 'port not open yet'}, log {broker.log_path}"
        )
        return 0
    print(f"not running (last bootstrap {broker.bootstrap}, data dir {broker.data_dir})")
    return 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="local_kafka.py", description=f"Local Apache Kafka {KAFKA_VERSION} (KRaft) broker"
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("install", help="fetch the Kafka jars into the cache (idempotent)")
    p = sub.add_parser("start", help="start a broker+controller node")
    p.add_argument("--port", type=int, default=9092, help="PLAINTEXT port (0: pick a free one)")
    p.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    p.add_argument("--foreground", action="store_true", help="stay attached; Ctrl-C stops")
    p.add_argument("--timeout", type=float, default=60.0, help="readiness timeout (s)")
    for name, helptext in (("stop", "stop the broker"), ("status", "is it running?")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
        if name == "stop":
            p.add_argument("--timeout", type=float, default=30.0, help="SIGKILL after (s)")
    args = ap.parse_args(argv)
    if getattr(args, "port", None) == 0:
        args.port = None
    handler = {
        "install": _cmd_install, "start": _cmd_start, "stop": _cmd_stop, "status": _cmd_status,
    }[args.cmd]  # fmt: skip
    try:
        return handler(args)
    except KafkaToolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
