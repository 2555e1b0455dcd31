"""Which processes on one SQLite database are alive: each holds an flock on its own file beside it.

The kernel drops an flock when its process dies, however it dies (kill -9 included), so a
process whose file can be locked by someone else is gone, and what it had claimed can be
taken at once instead of when its lease runs out. A process with no file (one that never
made one, or whose file was cleaned up) is judged by its lease alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from bot.logs import get_logger

log = get_logger("moko.store")


class ProcessFiles:
    """The `<database>.live/` directory: one locked file per open store."""

    def __init__(self, database_path: str) -> None:
        self.directory = Path(database_path + ".live")
        self._fd: int | None = None
        self._path: Path | None = None

    def _file(self, owner: str) -> Path:
        # Owners hold host names and colons: the file is named by a digest, the owner is inside.
        return self.directory / (hashlib.blake2b(owner.encode(), digest_size=12).hexdigest() + ".lock")

    def hold(self, owner: str) -> bool:
        """Create and lock this process's file; False (liveness off, leases only) if the
        directory cannot be written, e.g. a read-only database next to it."""
        path = self._file(owner)
        while True:
            try:
                self.directory.mkdir(mode=0o700, exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as exc:
                log.warning("process_file_unavailable", directory=str(self.directory), error=exc.strerror)
                return False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                # Another process's clean-up may have taken the new, still unlocked file for
                # a dead one's and removed it: then make it again.
                if os.fstat(fd).st_ino != os.stat(path).st_ino:
                    raise FileNotFoundError(path)
                os.ftruncate(fd, 0)
                os.write(fd, owner.encode())
            except FileNotFoundError:
                os.close(fd)
                continue
            except OSError:
                os.close(fd)
                raise
            self._fd, self._path = fd, path
            return True

    def release(self) -> None:
        """Remove this process's file (a clean stop leaves nothing behind), then unlock it."""
        if self._fd is None or self._path is None:
            return
        with contextlib.suppress(OSError):
            self._path.unlink()
        os.close(self._fd)
        self._fd = self._path = None

    def is_dead(self, owner: str) -> bool:
        """Whether owner's process is gone: its file exists and nobody holds its lock."""
        return _lockable(self._file(owner))

    def dead_files(self) -> Iterator[tuple[Path, str]]:
        """(file, owner) of every process in the directory that is gone."""
        if not self.directory.is_dir():
            return
        for path in self.directory.glob("*.lock"):
            if path == self._path or not _lockable(path):
                continue
            with contextlib.suppress(OSError):
                yield path, path.read_text(errors="replace")

    def remove_dead(self, still_referenced: Callable[[str], bool]) -> int:
        """Delete the files of dead processes nothing in the database refers to any more."""
        removed = 0
        for path, owner in list(self.dead_files()):
            if not still_referenced(owner):
                with contextlib.suppress(OSError):
                    path.unlink()
                    removed += 1
        return removed


def _lockable(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False  # no file: never registered, or cleaned up once nothing referred to it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    else:
        return True  # closing the descriptor below releases the probe's lock
    finally:
        os.close(fd)
