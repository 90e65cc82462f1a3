"""Noticing that the database went away under the running bot.

A SQLite file deleted (or replaced by another file) while the bot runs is not an error SQLite reports: pooled
connections keep reading and writing the deleted inode, which vanishes with the last of them, and new connections
open whatever file now has the name. `StoreGuard` remembers the file's device and inode when the store is opened
and compares them before every transaction (one `stat`, microseconds); `fail(reason)` does the same for what
other checks find (`db.instance.watch`: the database now answers with another identity). From then on every
transaction raises `DatabaseGone` before it begins: nothing more is written, and the bot refuses new jobs with
its message. The owner's log gets one CRITICAL line saying what happened and what to do.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from db.errors import StoreError

log = logging.getLogger(__name__)

USER_MESSAGE = ("The bot's database file was deleted or replaced while the bot ran, so the bot refuses new jobs "
                "and writes nothing more until its owner restarts it. Nothing was changed.")


class DatabaseGone(StoreError):
    """The database the bot opened is not there any more. `str(err)` is meant for users; the log has details."""

    def __init__(self, detail: str):
        super().__init__(USER_MESSAGE)
        self.detail = detail


class StoreGuard:
    """Refuses every transaction once the database file of the store was deleted or replaced."""

    def __init__(self, path: Path | None):
        self.path = path  # the SQLite file; None for other databases (only `fail` applies)
        self._opened: tuple[int, int] | None = None
        self.detail: str | None = None  # what went wrong, once it did

    def arm(self) -> None:
        """Remember the file as it is now (after opening and migrating it)."""
        if self.path is not None:
            st = os.stat(self.path)
            self._opened = (st.st_dev, st.st_ino)

    def check(self) -> None:
        """Raise `DatabaseGone` if the database went away (now or before)."""
        if self.detail is None and self._opened is not None:
            problem = self._file_problem()
            if problem is not None:
                self.fail(problem)
        if self.detail is not None:
            raise DatabaseGone(self.detail)

    def fail(self, detail: str) -> None:
        """From now on refuse every transaction; say so loudly, once."""
        if self.detail is not None:
            return
        self.detail = detail
        log.critical("%s. fluxbot writes nothing more to the database and refuses new jobs. Put the file back and "
                     "restart the bot (a restart opens whatever file is at that path then, an empty one if none)",
                     detail)

    def _file_problem(self) -> str | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return f"the database file {self.path} was deleted while the bot ran"
        except OSError as e:
            return f"the database file {self.path} cannot be read any more ({e.strerror})"
        if (st.st_dev, st.st_ino) != self._opened:
            return (f"the database file {self.path} was replaced by another file while the bot ran (inode "
                    f"{self._opened[1]} -> {st.st_ino})")
        return None
