"""Atomic file writes: nothing a user saved is ever half-written.

``atomic_write(path, data)`` writes to a temporary file in the same folder, flushes and
``fsync``s it, then ``os.replace``s it over ``path`` (atomic on POSIX and Windows) and
``fsync``s the folder so the rename itself survives a crash.  A crash or an exception at
any point leaves the previous file at ``path`` untouched and no temporary file behind.
"""

from __future__ import annotations

import os
import tempfile
from typing import Callable

__all__ = ["atomic_write"]


def atomic_write(path, data: bytes | str | Callable) -> None:
    """Atomically write ``data`` (bytes, text, or a ``write(binary_file)`` callable) to ``path``."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; keep the usual permissions
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:  # make the rename durable (POSIX); harmless to skip where folders cannot be opened
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
