"""Shared fixtures for the Quiver Python test suite.

The suite starts its own `quiver standalone` servers (binary from the
QUIVER_BIN environment variable, default `target/debug/quiver` in the repo
root), each on a free loopback port with a temporary data directory.

Fixtures:
  quiver_factory         -- function-scoped factory: quiver_factory(extra_args=[...])
                            returns a started QuiverServer; all are killed at teardown.
  module_quiver_factory  -- the same, but servers live for the whole module.
  quiver                 -- a function-scoped server with default options.
  module_quiver          -- one default server shared by all tests of a module.

QuiverServer offers connect(), restart() (graceful stop + start on the same
data dir and port), kill() (SIGKILL), crash_restart() (SIGKILL + start),
is_alive() and objects_dir / parquet_files() for checking sealed data.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import psycopg
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

# Every server started by this session, so that none outlives pytest even when
# it is interrupted: SIGTERM becomes KeyboardInterrupt (fixture teardown runs)
# and an atexit hook kills whatever is left.
_ALL_SERVERS: list["QuiverServer"] = []


def _kill_all_servers() -> None:
    for srv in _ALL_SERVERS:
        try:
            srv.kill()
        except Exception:
            pass


def _sigterm_to_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt(f"received signal {signum}")


atexit.register(_kill_all_servers)
if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, _sigterm_to_keyboard_interrupt)
DEFAULT_BIN = REPO_ROOT / "target" / "debug" / "quiver"
READY_TIMEOUT = float(os.environ.get("QUIVER_READY_TIMEOUT", "120"))


def quiver_bin() -> Path:
    p = Path(os.environ.get("QUIVER_BIN", str(DEFAULT_BIN)))
    if not p.is_absolute():
        p = REPO_ROOT / p
    return p


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class QuiverServer:
    """One `quiver standalone` process bound to a fixed data dir and port."""

    def __init__(self, data_dir: Path, port: int, log_path: Path, extra_args=None):
        self.bin = quiver_bin()
        self.data_dir = Path(data_dir)
        self.port = port
        self.log_path = Path(log_path)
        self.extra_args = list(extra_args or [])
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        # Extra libpq options for every connection (password, sslmode, ...).
        self.client_options: dict = {}
        # Extra environment for the server process (e.g. RUST_LOG).
        self.env: dict = {}
        _ALL_SERVERS.append(self)

    # -- process control ---------------------------------------------------

    def command(self) -> list[str]:
        return [
            str(self.bin),
            "standalone",
            "--data-dir",
            str(self.data_dir),
            "--listen",
            f"127.0.0.1:{self.port}",
            *self.extra_args,
        ]

    def start(self, timeout: float = READY_TIMEOUT) -> "QuiverServer":
        if not self.bin.exists():
            raise RuntimeError(
                f"quiver binary not found at {self.bin} (build it with `cargo build` "
                "or set QUIVER_BIN)"
            )
        assert self.proc is None or self.proc.poll() is not None, "server already running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # A restart right after a kill may briefly race with the old socket;
        # retry a few times, but only if start-up failed because the address
        # was in use (any other early exit, e.g. failed recovery, is an error).
        last_error = None
        for attempt in range(5):
            log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            with open(self.log_path, "ab") as log:
                log.write(
                    f"\n=== start #{self.starts + 1} (attempt {attempt + 1}): "
                    f"{' '.join(self.command())}\n".encode()
                )
                log.flush()
                self.proc = subprocess.Popen(
                    self.command(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=str(self.data_dir.parent),
                    env={**os.environ, **self.env},
                    start_new_session=True,
                )
            try:
                self.wait_ready(timeout)
                self.starts += 1
                return self
            except ServerExited as e:
                last_error = e
                with open(self.log_path, "rb") as log:
                    log.seek(log_offset)
                    output = log.read().decode(errors="replace").lower()
                if "in use" not in output and "addrinuse" not in output:
                    break
                time.sleep(1.0)
        raise RuntimeError(f"quiver failed to start: {last_error}\n{self.log_tail()}")

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServerExited(f"exited with code {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                    pass
                with self.connect(connect_timeout=5) as conn:
                    conn.execute("SELECT 1").fetchone()
                return
            except (OSError, psycopg.Error) as e:
                last = e
                time.sleep(0.2)
        self.kill()
        raise RuntimeError(
            f"quiver not ready on port {self.port} after {timeout}s: {last}\n{self.log_tail()}"
        )

    def is_alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the server (simulated crash) and reap it."""
        if self.proc is None:
            return
        # The server runs in its own session (start_new_session=True), so its
        # pid is also its process-group id: kill the whole group so that no
        # helper process survives the "crash". Only while the process has not
        # been reaped (returncode is None), so the pid cannot have been reused.
        if self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.proc.wait(timeout=30)

    def stop(self, timeout: float = 15.0) -> None:
        """Graceful stop (SIGTERM), falling back to SIGKILL."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def restart(self, timeout: float = READY_TIMEOUT) -> "QuiverServer":
        """Graceful stop, then start again on the same data dir and port."""
        self.stop()
        return self.start(timeout)

    def crash_restart(self, timeout: float = READY_TIMEOUT) -> "QuiverServer":
        """SIGKILL, then start again on the same data dir and port."""
        self.kill()
        return self.start(timeout)

    # -- clients -------------------------------------------------------------

    def conninfo(self) -> dict:
        return dict(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres")

    def connect(self, autocommit: bool = True, connect_timeout: int = 10, **kwargs):
        return psycopg.connect(
            **self.conninfo(),
            autocommit=autocommit,
            connect_timeout=connect_timeout,
            **{**self.client_options, **kwargs},
        )

    # -- data dir inspection ------------------------------------------------

    @property
    def objects_dir(self) -> Path:
        return self.data_dir / "objects"

    def parquet_files(self) -> list[Path]:
        if not self.objects_dir.exists():
            return []
        return sorted(p for p in self.objects_dir.rglob("*.parquet") if p.is_file())

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        tail = text.splitlines()[-lines:]
        return f"--- last {len(tail)} lines of {self.log_path} ---\n" + "\n".join(tail)


class ServerExited(RuntimeError):
    pass


def _make_server(base: Path, extra_args) -> QuiverServer:
    base.mkdir(parents=True, exist_ok=True)
    return QuiverServer(
        data_dir=base / "data",
        port=free_port(),
        log_path=base / "quiver.log",
        extra_args=extra_args,
    )


def _factory(base_dir_fn):
    servers: list[QuiverServer] = []

    def factory(extra_args=None, start=True) -> QuiverServer:
        srv = _make_server(base_dir_fn(len(servers)), extra_args)
        servers.append(srv)
        if start:
            srv.start()
        return srv

    return factory, servers


def _teardown(servers):
    for srv in servers:
        srv.kill()
        # Shown by pytest only when a test failed.
        print(srv.log_tail())


@pytest.fixture
def quiver_factory(tmp_path):
    """quiver_factory(extra_args=None, start=True) -> QuiverServer (per test)."""
    factory, servers = _factory(lambda n: tmp_path / f"server{n}")
    yield factory
    _teardown(servers)


@pytest.fixture(scope="module")
def module_quiver_factory(tmp_path_factory):
    """Like quiver_factory, but the servers live for the whole module."""
    factory, servers = _factory(lambda n: tmp_path_factory.mktemp(f"quiver{n}"))
    yield factory
    _teardown(servers)


@pytest.fixture
def quiver(quiver_factory) -> QuiverServer:
    return quiver_factory()


@pytest.fixture(scope="module")
def module_quiver(module_quiver_factory) -> QuiverServer:
    return module_quiver_factory()


def wait_for_index_builds(conn, timeout: float = 180.0) -> None:
    """Waits until no index build is queued or running."""
    deadline = time.monotonic() + timeout
    while conn.execute(
        "SELECT count(*) FROM quiver.index_builds WHERE state IN ('queued', 'running')"
    ).fetchone()[0]:
        assert time.monotonic() < deadline, "index builds did not finish"
        time.sleep(0.2)
