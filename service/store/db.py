"""Engines for the event database: the URL's checks and redaction, timeouts, SQLite pragmas, migrations,
and which database errors mean "unreachable, retry" rather than "this change is bad"."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from ..netguard import redact_text
from .errors import InvalidDatabaseUrl

log = logging.getLogger("vad.store")

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# Two service processes starting at once against one PostgreSQL run their migrations one after the other.
MIGRATION_LOCK_KEY = 0x5641_4445  # "VADE"
REDACTED = "***"
VERSION_TABLE = "vad_alembic_version"  # not Alembic's default name: the database may be shared


def database_url(url: str | None, data_dir: Path) -> URL:
    """The URL to connect to: SQLite in DATA_DIR/vad.db by default; postgresql:// means psycopg 3."""
    if url is None or not str(url).strip():
        data_dir.mkdir(parents=True, exist_ok=True)
        return URL.create("sqlite", database=str(data_dir / "vad.db"))
    try:
        parsed = make_url(str(url).strip())
    except (ArgumentError, ValueError) as exc:
        raise InvalidDatabaseUrl(
            "the event database URL cannot be parsed (expected sqlite:///PATH or "
            f"postgresql+psycopg://USER:PASSWORD@HOST/DB): {redact_text(str(exc), str(url))}"
        ) from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend in ("postgresql", "postgres") and driver in ("", "psycopg"):
        return parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite" and driver in ("", "pysqlite"):
        if not parsed.database or parsed.database == ":memory:":
            # Each pooled connection would get its own empty in-memory database.
            raise InvalidDatabaseUrl("the event database must be a SQLite file (sqlite:///PATH), not :memory:")
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        return parsed
    raise InvalidDatabaseUrl(
        f"unsupported event database {parsed.drivername!r} in {shown(parsed)}: "
        "use sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST/DB"
    )


def shown(url: URL) -> str:
    """The URL as logs and errors may show it (password hidden)."""
    return url.render_as_string(hide_password=True)


def secrets(url: URL) -> list[str]:
    return [s for s in (url.password,) if s]


def redact(text: str, url: URL) -> str:
    """`text` with the URL (in both renderings) and its password masked."""
    text = redact_text(str(text), url.render_as_string(hide_password=False))
    for secret in secrets(url):
        text = text.replace(str(secret), REDACTED)
    return text


def create_engine(url: URL, *, connect_timeout_s: float, statement_timeout_s: float) -> Engine:
    args: dict[str, Any] = {}
    options: dict[str, Any] = {
        "hide_parameters": True,  # event payloads stay out of error messages and logs
        "pool_pre_ping": True,  # a connection killed by a database restart is replaced, not used
    }
    if url.get_backend_name() == "postgresql":
        args = {
            "connect_timeout": max(1, round(connect_timeout_s)),
            "application_name": "vad",
            # A hung query (lock wait, overloaded server) fails instead of holding the writer forever.
            "options": f"-c statement_timeout={round(statement_timeout_s * 1000)}",
            # A server that vanishes without closing the connection is noticed within ~30 s.
            "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
        }
        options |= {"pool_size": 5, "max_overflow": 5, "pool_timeout": connect_timeout_s, "pool_recycle": 1800}
    else:
        # The busy timeout (seconds): a reader or the retention thread holding the lock makes the writer wait.
        args = {"timeout": statement_timeout_s, "check_same_thread": False}
    engine = sa.create_engine(url, connect_args=args, **options)
    if url.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers (the API) never block the writer thread and the other way round.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes; WAL keeps it consistent
    # The busy timeout is sqlite3's `timeout` connect argument (statement_timeout_s), set in create_engine.
    cursor.close()


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest revision (idempotent). Needs no alembic.ini: the Config is built here."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_revision()


def is_transient(exc: BaseException) -> bool:
    """Unreachable, restarting, locked or timed out: retry later. Anything else is a bad change."""
    if isinstance(exc, OperationalError | InterfaceError | DisconnectionError | PoolTimeout):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def reason(exc: BaseException, url: URL) -> str:
    """One short line saying why, for logs and error messages: no SQL, no parameters, no password."""
    original = getattr(exc, "orig", None) or exc
    first = (str(original).strip().splitlines() or [""])[0]
    return redact(f"{type(original).__name__}: {first}"[:300], url)
