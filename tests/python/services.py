"""The real backing services tests run Quiver against, as plain processes on
127.0.0.1 (installed by scripts/ci-deps.sh): etcd (Debian's etcd-server)
and s3s-fs (an S3 API over a directory, compiled once into
~/.cache/quiver-services). Each helper starts one process and stops exactly
that process."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from conftest import free_port

SERVICES = Path(os.environ.get("QUIVER_SERVICES_DIR", Path.home() / ".cache" / "quiver-services"))
S3S_FS = SERVICES / "bin" / "s3s-fs"


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")
            time.sleep(0.1)


class _Service:
    """One service process: started with its output appended to a log file,
    ready once its port accepts connections; `kill()` is SIGKILL."""

    proc: subprocess.Popen | None = None

    def _spawn(self, args: list[str], log_path: Path, port: int, cwd: Path | None = None) -> None:
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=cwd)
        wait_for_port(port)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


class Etcd(_Service):
    """One etcd member with its own data directory; `kill()` is SIGKILL and
    `start()` again reuses the data directory and ports."""

    def __init__(self, base: Path):
        self.base = base
        self.data_dir = base / "etcd-data"
        self.client_port = free_port()
        self.peer_port = free_port()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def start(self) -> "Etcd":
        etcd = shutil.which("etcd")
        assert etcd, "etcd missing: run scripts/ci-deps.sh (apt-get install etcd-server)"
        peer = f"http://127.0.0.1:{self.peer_port}"
        self._spawn(
            [etcd, "--name", "n1", "--data-dir", str(self.data_dir),
             "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"n1={peer}", "--max-txn-ops", "1024"],
            self.base / "etcd.log", self.client_port,
        )
        return self

    def keys(self, prefix: str) -> list[str]:
        out = subprocess.run(
            ["etcdctl", "--endpoints", self.endpoint, "get", "--prefix", "--keys-only", prefix],
            env={**os.environ, "ETCDCTL_API": "3"}, check=True, capture_output=True, text=True,
        ).stdout
        return [line for line in out.splitlines() if line]


class S3Server(_Service):
    """s3s-fs serving ROOT (a bucket is a sub-directory) with fixed test credentials."""

    ACCESS_KEY = "quiver-key"
    SECRET_KEY = "quiver-secret"

    def __init__(self, base: Path, bucket: str = "quiver"):
        self.root = base / "s3"
        self.bucket_dir = self.root / bucket
        self.bucket_dir.mkdir(parents=True, exist_ok=True)
        self.bucket = bucket
        self.port = free_port()
        self.log_path = base / "s3s-fs.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "S3Server":
        assert S3S_FS.exists(), f"{S3S_FS} missing: run scripts/ci-deps.sh"
        self._spawn(
            [str(S3S_FS), "--host", "127.0.0.1", "--port", str(self.port),
             "--access-key", self.ACCESS_KEY, "--secret-key", self.SECRET_KEY, str(self.root)],
            self.log_path, self.port,
        )
        return self

    def stop(self) -> None:
        # s3s-fs stops cleanly on SIGINT (SIGTERM kills it at once).
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def config_toml(self) -> str:
        return f"""
[storage.object]
kind = "s3"
bucket = "{self.bucket}"
endpoint = "{self.endpoint}"
access_key_id = "{self.ACCESS_KEY}"
secret_access_key = "{self.SECRET_KEY}"
allow_http = true
"""


TANSU = SERVICES / "bin" / "tansu"


class KafkaBroker(_Service):
    """A tansu broker (Kafka protocol) storing into SQLite under `base`;
    `kill()` is SIGKILL, and `start()` again reuses the port and the data."""

    def __init__(self, base: Path):
        self.base = base
        self.db = base / "tansu.db"
        self.port = free_port()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "KafkaBroker":
        assert TANSU.exists(), f"{TANSU} missing: run scripts/ci-deps.sh"
        url = f"tcp://127.0.0.1:{self.port}"
        self._spawn(
            [str(TANSU), "broker", "--listener-url", url, "--advertised-listener-url", url,
             # tansu resolves the SQLite path against its working directory.
             "--storage-engine", f"sqlite://{self.db.name}"],
            self.base / "tansu.log", self.port, cwd=self.base,
        )
        return self


class QuiverNode(_Service):
    """One Quiver role process (`quiver query-node`, `data-node`,
    `coordinator`, `streaming-node` or `proxy`; a proxy's address is its
    PostgreSQL port)
    with its own local directory; `kill()` is SIGKILL and `start()` again
    reuses the port and directory. Flight calls are logged (debug) so tests
    can see which node served what."""

    def __init__(self, base: Path, role: str, name: str, config: Path):
        from conftest import quiver_bin

        self.bin = quiver_bin()
        self.role = role
        self.name = name
        self.config = config
        self.data_dir = base / name
        self.port = free_port()
        self.log_path = base / f"{name}.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> "QuiverNode":
        """`wait=False` for a process that does not listen at once (a
        standby coordinator listens once it leads)."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(self.bin), self.role, "--config", str(self.config),
                 "--data-dir", str(self.data_dir), "--listen", self.address],
                stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "RUST_LOG": "info,quiver_transport=debug"},
            )
        if wait:
            wait_for_port(self.port, timeout=90)
        return self

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def probe(self) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.bin), "probe", self.address],
                              capture_output=True, text=True, timeout=30)
