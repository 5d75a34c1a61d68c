"""Durable file writes: keys, certificates and state are never left half-written.

``atomic_write`` writes to a temp file created 0600 beside the target (so a secret is
never readable, even for an instant), fsyncs it, renames it over the target and fsyncs
the folder, so after a crash the file is either the old one or the new one, whole.
"""

from __future__ import annotations

import contextlib
import os
import secrets

PRIVATE = 0o600


def atomic_write(path: str, data: bytes, mode: int = PRIVATE) -> None:
    """Replace ``path`` with ``data`` atomically; the file ends with ``mode``. Raises OSError."""
    directory, base = os.path.split(os.path.abspath(path))
    temp = os.path.join(directory, f".{base}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(temp, flags, PRIVATE)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have narrowed the creation mode
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    fsync_folder(directory)


def fsync_folder(directory: str) -> None:
    """Make renames in ``directory`` durable (best effort: not every platform can)."""
    try:
        fd = os.open(directory or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
