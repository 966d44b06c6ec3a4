"""Files that mnstream writes: checked before any work starts, never replaced unless asked, one run at a time."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Collection
from pathlib import Path

from stream.types import UsageError


def check_writable(path: str | Path, *, option: str, overwrite: bool, suffixes: Collection[str] = ()) -> None:
    """Fails before any work if `path` cannot be written, or is a file that only `overwrite` may replace.

    Args:
        path: The file a command will write.
        option: The flag that named it (`--output`), so the message names what the user typed.
        overwrite: Whether an existing file may be replaced.
        suffixes: The endings the file may have; any when empty.

    Raises:
        UsageError: A wrong ending, a folder in its place, a missing folder or a file where one should be, no
            permission, or an existing file without `overwrite`.
    """
    _check_location(Path(path), option=option, suffixes=suffixes)
    if Path(path).exists() and not overwrite:
        raise _exists(path, option)


def is_folder(pattern: str) -> bool:
    """Whether `--output pattern` names a folder, where each stream's file goes, rather than a file."""
    return pattern.endswith(("/", os.sep)) or Path(pattern).is_dir()


class OutputLock:
    """This run's hold on one output file, so that a second run writing the same file is refused instead of
    interleaving with it.

    An advisory lock on the file itself: the kernel drops it when the process ends, however it ends, so a run that
    crashed leaves no stale lock behind. The file is created if need be (the lock needs it), and removed again on
    `release` if nothing was written into it.
    """

    def __init__(self, path: str, *, option: str, overwrite: bool, suffixes: Collection[str] = ()) -> None:
        """Checks the path as `check_writable` does and takes the lock.

        Raises:
            UsageError: As `check_writable`, or another process holds the file.
        """
        _check_location(Path(path), option=option, suffixes=suffixes)
        self._path = path
        existed = os.path.exists(path)
        try:
            self._descriptor = os.open(path, os.O_WRONLY | os.O_CREAT, 0o666)
        except OSError as error:
            raise UsageError(f"cannot write {option} {path}: {error.strerror.lower()}") from None
        self._created = not existed
        try:
            fcntl.flock(self._descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._descriptor)
            raise UsageError(
                f"{path} is being written by another run; wait for it to end or choose another {option}"
            ) from None
        if existed and not overwrite:
            os.close(self._descriptor)
            raise _exists(path, option)

    def release(self) -> None:
        """Lets the file go; one this run created and never wrote into is removed. Safe to call twice."""
        if self._descriptor < 0:
            return
        if self._created and os.fstat(self._descriptor).st_size == 0:
            Path(self._path).unlink(missing_ok=True)
        os.close(self._descriptor)
        self._descriptor = -1


def _check_location(target: Path, *, option: str, suffixes: Collection[str]) -> None:
    if suffixes and target.suffix.lower() not in suffixes:
        raise UsageError(f"{option} {target}: use one of the extensions {', '.join(suffixes)}")
    if target.is_dir():
        raise UsageError(f"{option} {target} is a folder; give a file name inside it")
    folder = target.parent
    if not folder.is_dir():
        blocking_file = next((parent for parent in [folder, *folder.parents] if parent.is_file()), None)
        if blocking_file is not None:
            raise UsageError(f"{option} {target}: {blocking_file} is a file, not a folder; choose another path")
        raise UsageError(f"{option} {target}: folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise UsageError(f"{option} {target}: permission denied; choose another path")


def _exists(path: str | Path, option: str) -> UsageError:
    return UsageError(f"{path} exists; add --overwrite to replace it, or choose another {option}")
