"""A private PostgreSQL server in a data directory of its own (demo and fault tests).

Used when no ``AUDIFI_DATABASE_URL`` is configured (``audifi-indexer demo``) and by tests that
must stop or restart a server without touching the machine's shared one.

Guarantees:

* The server listens on 127.0.0.1 only, on the port given (a free one by default), with its
  Unix socket inside the data directory; trust authentication for the local user.
* It is started and stopped through ``pg_ctl``; :meth:`LocalPostgres.stop` stops it by the
  postmaster's PID (``pg_ctl stop -m fast``, then SIGKILL if it does not go).
* It uses the machine's PostgreSQL binaries (``/usr/lib/postgresql/<v>/bin`` or ``PATH``).
  ``initdb`` refuses to run as root; as root the cluster is owned by the ``postgres`` system
  user (``runuser``).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from indexer.errors import IndexerError

DEFAULT_DATABASE = "audifi"


class LocalPostgresError(IndexerError):
    """A private PostgreSQL server could not be set up or started."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_bin_dir() -> Path | None:
    """The directory of the newest installed ``initdb``/``pg_ctl``, or None."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    for bin_dir in candidates:
        if (bin_dir / "initdb").is_file() and (bin_dir / "pg_ctl").is_file():
            return bin_dir
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb and shutil.which("pg_ctl") else None


@dataclass
class LocalPostgres:
    """One private server. Use :func:`start_local_postgres` to create and start it."""

    data_dir: Path
    port: int
    bin_dir: Path
    run_as: str | None
    database: str = DEFAULT_DATABASE
    log_file: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_file = self.data_dir.parent / f"{self.data_dir.name}.log"

    @property
    def url(self) -> str:
        user = self.run_as or pwd.getpwuid(os.getuid()).pw_name
        return f"postgresql://{user}@127.0.0.1:{self.port}/{self.database}"

    def _cmd(self, *args: str) -> list[str]:
        if self.run_as:
            return ["runuser", "-u", self.run_as, "--", *args]
        return list(args)

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self._cmd(*args), capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise LocalPostgresError(
                f"{Path(args[0]).name} failed (exit {result.returncode}): "
                f"{(result.stderr or result.stdout).strip()[-800:]}"
            )
        return result

    def initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()

    def init(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.run_as:
            shutil.chown(self.data_dir, user=self.run_as, group=None)
            shutil.chown(self.data_dir.parent, user=self.run_as, group=None)
            reach = subprocess.run(
                self._cmd("test", "-w", str(self.data_dir)), capture_output=True, check=False
            )
            if reach.returncode != 0:
                raise LocalPostgresError(
                    f"the '{self.run_as}' system user (PostgreSQL refuses to run as root) cannot "
                    f"reach {self.data_dir}: a parent folder is not traversable for it. Use a "
                    "data directory under a world-readable folder (for example in the project "
                    "folder, the default ./.demo)"
                )
        self._run(
            str(self.bin_dir / "initdb"),
            "-D", str(self.data_dir),
            "-A", "trust",
            "-E", "UTF8",
            "--no-instructions",
        )  # fmt: skip

    def pid(self) -> int | None:
        pid_file = self.data_dir / "postmaster.pid"
        try:
            return int(pid_file.read_text().splitlines()[0])
        except (FileNotFoundError, IndexError, ValueError):
            return None

    def start(self, timeout: float = 30.0) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={self.data_dir} -c fsync=off "
            "-c full_page_writes=off -c synchronous_commit=off"
        )
        self._run(
            str(self.bin_dir / "pg_ctl"),
            "-D", str(self.data_dir),
            "-l", str(self.log_file),
            "-o", options,
            "-w", "-t", str(int(timeout)),
            "start",
        )  # fmt: skip
        self._ensure_database()

    def _ensure_database(self) -> None:
        import psycopg

        admin = self.url.rsplit("/", 1)[0] + "/postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{self.database}"')

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server by its PID; a no-op when it is not running."""
        pid = self.pid()
        if pid is None:
            return
        with contextlib.suppress(LocalPostgresError):
            self._run(
                str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast",
                "-w", "-t", str(int(timeout)), "stop",
            )  # fmt: skip
        if self.pid() is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def start_local_postgres(data_dir: Path, port: int | None = None) -> LocalPostgres:
    """Initialise (first time) and start a private server in ``data_dir``."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise LocalPostgresError(
            "no PostgreSQL binaries (initdb, pg_ctl) found under /usr/lib/postgresql or on "
            "PATH; install PostgreSQL (Debian: apt-get install postgresql) or set "
            "AUDIFI_DATABASE_URL to an existing server"
        )
    run_as = "postgres" if os.geteuid() == 0 else None
    if run_as:
        try:
            pwd.getpwnam(run_as)
        except KeyError as exc:
            raise LocalPostgresError(
                "running as root, but there is no 'postgres' system user to own the private "
                "cluster (initdb refuses root); create one or run as a normal user"
            ) from exc
    server = LocalPostgres(
        data_dir=data_dir.resolve(), port=port or free_port(), bin_dir=bin_dir, run_as=run_as
    )
    if not server.initialised():
        server.init()
    if server.pid() is not None and not _alive(server.pid() or 0):
        (server.data_dir / "postmaster.pid").unlink(missing_ok=True)
    server.start()
    return server
