"""Atomic file writes: a file is written under a temporary name beside it and renamed into place when
complete, so a reader (or a crash) never sees a half-written file; and what stops a folder from being
made. This module does not import TensorFlow."""

import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_write(path, encoding=None, errors="strict"):
    """Open a temporary file beside `path`; on success it replaces `path`, on error it is removed.

    Binary, or text in `encoding`. The file gets the usual permissions of a new file (mkstemp would
    make it private).
    """
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=os.path.basename(path) + ".",
                               suffix=".tmp")
    try:
        text = {"mode": "w", "encoding": encoding, "errors": errors} if encoding else {"mode": "wb"}
        with os.fdopen(fd, **text) as f:
            yield f
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def nearest_existing(path):
    """`path` (absolute) or, when it does not exist, the nearest folder above it that does."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    return existing


def blocking_file(path):
    """The file that stops a folder from being at `path`: `path` itself or a folder above it that is
    a file; None when the folder exists or can be made."""
    existing = nearest_existing(path)
    return None if os.path.isdir(existing) else existing
