"""A real PostgreSQL server for tests (Debian's postgresql package: initdb, pg_ctl), on a free port.

    with PostgresServer() as server:
        server.url                      # postgresql+psycopg://vad:PASSWORD@127.0.0.1:PORT/vad
        url = server.create_database()  # a fresh, empty database on the same server
        server.stop(); server.start()   # an outage: same port, same data

PostgreSQL refuses to run as root: as root the server runs as the `postgres` user (created by the Debian
package; created here only when it is missing and we are root). Its data directory and unix socket lie
in a temporary folder that user owns, removed at the end.

`postgres_available()` says whether this machine can run it.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

USER = "vad"
# Special characters on purpose: the URL quotes them, and redaction must find both spellings.
PASSWORD = "pg-S3cret/Pa:ss%word"
POSTGRES_USER = "postgres"


def _bin_dir() -> Path | None:
    """The folder holding initdb, pg_ctl and psql: on PATH, else Debian's (not on PATH there), newest first."""
    found = shutil.which("initdb")
    candidates = [Path(found).resolve().parent] if found else []
    debian = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted((Path(d) for d in debian), key=lambda d: _version(d.parent.name), reverse=True)
    for folder in candidates:
        if all((folder / tool).exists() for tool in ("initdb", "pg_ctl", "psql")):
            return folder
    return None


def _version(name: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in name.split("."))
    except ValueError:
        return (0,)


def postgres_available() -> str | None:
    """None when a PostgreSQL server can be started here, else why not."""
    if _bin_dir() is None:
        return "PostgreSQL is not installed (Debian package postgresql: initdb, pg_ctl)"
    if os.geteuid() == 0 and not _user_exists(POSTGRES_USER) and not shutil.which("useradd"):
        return "running as root without a postgres user, and useradd is missing"
    return None


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PostgresServer:
    def __init__(self, *, port: int = 0) -> None:
        self.port = port or free_port()
        self.bin = _bin_dir()
        if self.bin is None:
            raise RuntimeError(postgres_available() or "PostgreSQL missing")
        # As root, /tmp itself: the postgres user must reach the folder (TMPDIR may be private to root).
        self.root = Path(tempfile.mkdtemp(prefix="vad-pg-", dir="/tmp" if os.geteuid() == 0 else None))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.running = False
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            if not _user_exists(POSTGRES_USER):
                # Only here, only as root: the Debian package normally creates this user.
                subprocess.run(["useradd", "--system", "--no-create-home", POSTGRES_USER], check=True,
                               capture_output=True, timeout=30)
            shutil.chown(self.root, POSTGRES_USER)
            self._as_user = ["runuser", "-u", POSTGRES_USER, "--"]
        self.database = "vad"

    @property
    def url(self) -> str:
        return self.url_for(self.database)

    def url_for(self, database: str, *, password: str = PASSWORD) -> str:
        from urllib.parse import quote

        return f"postgresql+psycopg://{USER}:{quote(password, safe='')}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*self._as_user, *args], capture_output=True, text=True, timeout=timeout)
        if done.returncode:
            tail = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed ({done.returncode}): {done.stderr[-2000:]}\n{tail}")
        return done

    def init(self) -> None:
        password_file = self.root / "password"
        password_file.write_text(PASSWORD + "\n")
        if self._as_user:
            shutil.chown(password_file, POSTGRES_USER)
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", USER, f"--pwfile={password_file}",
                  "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync")
        password_file.unlink()
        with (self.data / "postgresql.conf").open("a") as conf:
            # A throw-away server: durability off makes it fast.
            conf.write(f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                       f"unix_socket_directories = '{self.root}'\n"
                       "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n")
        self.start()
        self.psql(f"CREATE DATABASE {self.database}")

    def start(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "30", "start")
        self.running = True

    def stop(self) -> None:
        """A fast shutdown: clients are disconnected, the port is closed until start()."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop")
        self.running = False

    def psql(self, sql: str, database: str = "postgres") -> str:
        return self._run(str(self.bin / "psql"), "-h", str(self.root), "-p", str(self.port), "-U", USER,
                         "-d", database, "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql).stdout

    def create_database(self) -> str:
        """A new empty database on this server; its URL."""
        name = "t_" + uuid.uuid4().hex[:12]
        self.psql(f"CREATE DATABASE {name}")
        return self.url_for(name)

    def close(self) -> None:
        try:
            if self.running:
                self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        try:
            self.init()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
