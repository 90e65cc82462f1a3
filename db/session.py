"""Opening the store: an async engine, a session factory and, for SQLite, the per-connection PRAGMAs.

`open_store(url)` creates the SQLite folder, applies the migrations up to head (so an upgrade of the bot
keeps every user's history) and returns a `Store`. Any SQLAlchemy async URL works
(`postgresql+asyncpg://user:pass@host/db` to scale out).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from db.errors import StoreError
from db.guard import StoreGuard
from db.migrate import FOREIGN_KEYS_OFF, upgrade_to_head

log = logging.getLogger(__name__)

DEFAULT_URL = "sqlite+aiosqlite:///data/fluxbot.db"
DEFAULT_BUSY_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Store:
    """The open database: pass it to the functions of `db.jobs`. Close it with `await store.close()`."""
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    url: str  # password masked: safe to log
    revision_before: str | None = None  # schema revision found on opening (None: empty database)
    revision: str | None = None  # schema revision after migrating (None: opened with migrate=False)
    guard: StoreGuard = field(default_factory=lambda: StoreGuard(None))  # the file deleted/replaced under us

    def session(self) -> AsyncSession:
        return self.sessions()

    def check(self) -> None:
        """Raise `db.guard.DatabaseGone` if the database file was deleted or replaced since it was opened."""
        self.guard.check()

    async def close(self) -> None:
        await self.engine.dispose()

    async def __aenter__(self) -> "Store":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


def safe_url(url: str | URL) -> str:
    """The URL with its password hidden, for logs and messages."""
    return make_url(url).render_as_string(hide_password=True)


def is_sqlite(url: str | URL) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def sqlite_file(url: str | URL) -> Path | None:
    """The database file of a SQLite URL; None for in-memory databases and other backends."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:" \
            or u.database.startswith("file:"):
        return None
    return Path(u.database)


async def open_store(url: str = DEFAULT_URL, *, echo: bool = False, migrate: bool = True,
                     busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S) -> Store:
    """Open (and by default migrate to head) the database at `url`."""
    # 1. the URL must name an async driver, and a SQLite file needs its folder
    try:
        parsed = make_url(url)
    except Exception as e:
        raise StoreError(f"[database] url {url!r} is not a SQLAlchemy URL ({e}); e.g. {DEFAULT_URL}") from None
    shown = safe_url(parsed)
    file = sqlite_file(parsed)
    if file is not None:
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"[database] url {shown}: cannot create the folder {file.parent} for the database "
                             f"file ({e.strerror}); fix the path or its permissions") from None

    # 2. the engine; SQLite connections get WAL, foreign keys and a busy timeout each time one opens
    try:
        engine = create_async_engine(parsed, echo=echo, hide_parameters=True)  # rows hold interaction tokens
    except Exception as e:  # e.g. a sync driver, or a driver that is not installed
        raise StoreError(f"[database] url {shown}: cannot create an async engine ({e}); use an async driver "
                         f"such as sqlite+aiosqlite:// or postgresql+asyncpg:// (pip install fluxbot[postgres])") \
            from None
    if is_sqlite(parsed):
        install_sqlite_pragmas(engine, busy_timeout_s)
        # A connection invalidated by a cancelled query (a task cancelled at shutdown) is "terminated": the
        # adapter force-stops aiosqlite's worker thread while its shielded graceful close is still pending,
        # and that close (aiosqlite 0.22) then awaits a future the stopped thread never resolves, so the event
        # loop can never finish shutting down (seen as a hang at loop teardown in the e2e tests). A plain
        # close lets the thread finish its queue and stop by itself.
        dialect = engine.sync_engine.dialect
        dialect.do_terminate = dialect.do_close
    guard = StoreGuard(file)
    event.listen(engine.sync_engine, "begin", lambda _conn: guard.check(), insert=True)  # before any BEGIN
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    if not migrate:
        return Store(engine=engine, sessions=sessions, url=shown, guard=guard)

    # 3. bring the schema to head (creates it on an empty database)
    try:
        before, after = await upgrade_to_head(engine)
    except StoreError:
        await engine.dispose()
        raise
    except (SQLAlchemyError, OSError) as e:  # unreachable server, bad credentials, read-only file, …
        await engine.dispose()
        first_line = (str(e).splitlines() or [""])[0]
        raise StoreError(f"cannot open the database at [database] url {shown}: {e.__class__.__name__}: "
                         f"{first_line}. Check the URL, that the server is running, and the file's "
                         f"permissions") from e
    if before != after:
        log.info("database %s migrated from %s to %s", shown, before or "empty", after)
    log.info("database %s open at schema %s", shown, after)
    guard.arm()  # from now on a deleted or replaced file stops every transaction (db.guard)
    return Store(engine=engine, sessions=sessions, url=shown, revision_before=before, revision=after, guard=guard)


def install_sqlite_pragmas(engine: AsyncEngine, busy_timeout_s: float) -> None:
    """Run the SQLite PRAGMAs on every new connection of `engine`'s pool, and let SQLAlchemy emit BEGIN.

    Python's sqlite3 (legacy transaction control) emits BEGIN only before INSERT/UPDATE/DELETE: DDL then
    autocommits statement by statement (a failed migration would leave half a schema) and two SELECTs of one
    transaction may see different data. Turning that off and emitting BEGIN ourselves gives real
    transactions (the recipe of SQLAlchemy's SQLite dialect documentation).
    """
    busy_ms = int(busy_timeout_s * 1000)

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn) -> None:
        # foreign keys: set before every BEGIN (a no-op inside one); off only for migrations (db.migrate)
        off = conn.get_execution_options().get(FOREIGN_KEYS_OFF)
        conn.exec_driver_sql("PRAGMA foreign_keys=OFF" if off else "PRAGMA foreign_keys=ON")
        conn.exec_driver_sql("BEGIN")

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # sqlite3 stops emitting BEGIN; _on_begin does it
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer; persistent per file
            cursor.execute("PRAGMA foreign_keys=ON")  # per connection, off by default
            cursor.execute(f"PRAGMA busy_timeout={busy_ms}")  # wait for a lock instead of failing at once
            cursor.execute("PRAGMA synchronous=NORMAL")  # safe with WAL, fewer fsyncs
        finally:
            cursor.close()
