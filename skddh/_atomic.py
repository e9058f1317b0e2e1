"""Atomic file writes: a file is either its old self or complete, never half-written.

Every output of the ``skddh`` command line and of the report writer goes through
:func:`atomic_write`: the content goes to a temporary file in the target's directory (so the
final ``os.replace`` is a rename within one file system, atomic on POSIX and Windows), is
flushed and fsynced, and only then replaces the target. Any exception in between, a full disk
or a Ctrl-C (``KeyboardInterrupt``) included, removes the temporary file and leaves the old
target, if any, byte for byte as it was.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_savefig", "atomic_to_csv", "atomic_write", "atomic_write_text"]


def _new_file_mode(path: Path) -> int:
    """The permissions a plain ``open(path, "w")`` would give: the old file's, or 0o666 & ~umask.

    ``mkstemp`` creates its file 0o600; without this, every replaced output would turn private.
    """
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path, mode: str = "w", **open_kwargs):
    """Open a temporary file beside ``path``; on success, fsync it and replace ``path`` with it.

    Parameters
    ----------
    path : str or Path
        The file to write. Its directory must exist.
    mode : {"w", "wb", "wt"}, default="w"
        A write mode of :func:`open`.
    **open_kwargs
        Passed to :func:`open` (``encoding``, ``newline``, ...).

    Yields
    ------
    file object
        Write to it; it is closed when the block ends.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from skddh._atomic import atomic_write
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> with atomic_write(d / "a.txt") as f:
    ...     _ = f.write("complete")
    >>> try:
    ...     with atomic_write(d / "a.txt") as f:
    ...         _ = f.write("half")
    ...         raise OSError("disk full")
    ... except OSError:
    ...     pass
    >>> (d / "a.txt").read_text(), sorted(p.name for p in d.iterdir())
    ('complete', ['a.txt'])
    """
    if mode not in ("w", "wb", "wt"):
        raise ValueError(f"atomic_write writes whole files: mode 'w', 'wb' or 'wt', not {mode!r}")
    path = Path(path)
    file_mode = _new_file_mode(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            f = os.fdopen(fd, mode, **open_kwargs)
        except BaseException:
            os.close(fd)
            raise
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(path.parent)


def atomic_savefig(fig, path, **savefig_kwargs) -> None:
    """``fig.savefig(path, **savefig_kwargs)``, atomically (see :func:`atomic_write`).

    The format is the suffix of ``path`` unless ``format`` is given.
    """
    path = Path(path)
    savefig_kwargs.setdefault("format", path.suffix.lstrip(".") or None)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, **savefig_kwargs)


def atomic_to_csv(frame, path, **to_csv_kwargs) -> None:
    """``frame.to_csv(path, **to_csv_kwargs)``, atomically (see :func:`atomic_write`)."""
    with atomic_write(path, "w", newline="", encoding="utf-8") as f:
        frame.to_csv(f, **to_csv_kwargs)


def atomic_write_text(path, text: str) -> None:
    """``Path(path).write_text(text)`` in UTF-8, atomically (see :func:`atomic_write`)."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)
