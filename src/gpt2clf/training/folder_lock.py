"""A lock for the one writer of a cache folder, and the cleanup of temporaries that dead writers left.

:mod:`gpt2clf.training.feature_cache` computes a cache under :func:`exclusive_lock` on the cache root,
so a second run computing the same cache waits for the first and then reads its result. Folders
``ROOT/.<key>.<host>.<pid>.tmp`` written by older versions are removed by
:func:`remove_abandoned_temporaries` once their writer process is gone (only on the host that wrote them).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

__all__ = ["exclusive_lock", "remove_abandoned_temporaries"]


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """An advisory lock on the folder ``path`` (POSIX ``flock``; no lock file is left behind).

    The kernel releases it when the holder dies, so a killed run never blocks the next. A no-op
    where ``flock`` does not exist (the atomic rename still keeps readers from partial caches).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def remove_abandoned_temporaries(root: Path) -> None:
    """Delete temporary folders left on this host by writer processes that no longer run."""
    host = socket.gethostname()
    for entry in root.glob(".*.tmp"):
        parts = entry.name[1:-len(".tmp")].rsplit(".", 2)
        if len(parts) != 3 or parts[1] != host or not parts[2].isdigit():
            continue
        pid = int(parts[2])
        if pid == os.getpid() or not _process_exists(pid):
            shutil.rmtree(entry, ignore_errors=True)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True
