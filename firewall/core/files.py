"""Whether a file may have changed: the one check the config reload and the detectors share.

A hot reload has to notice two kinds of change: the config file itself, and the data files
that detectors read in ``start()`` (a vocabulary, a baseline) while their params, which
name only the path, stay the same. Both are compared the same way, so both survive a
Kubernetes ConfigMap update, which swaps a ``..data`` symlink in the mounted directory
instead of writing the file: the resolved target, inode, size and modification time,
not just the modification time.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["FileSignature", "file_signature"]

#: ``(resolved path, inode, size, mtime in ns)``; equal signatures mean the content is unchanged.
FileSignature = tuple[str, int, int, int]


def file_signature(path: str | os.PathLike[str]) -> FileSignature | None:
    """What changes when the file's content can have changed, symlink swaps included.

    ``None`` when the file cannot be read (missing, a broken link): a file that appears
    later then differs from it. A ``stat`` call, no read: cheap enough for a poll loop,
    never meant for the request path.
    """
    try:
        real = Path(path).resolve()
        st = real.stat()
    except OSError:
        return None
    return (str(real), st.st_ino, st.st_size, st.st_mtime_ns)
