"""Atomic file writes: a file is written under a temporary name beside it and renamed into place when
complete, so a reader (or a crash) never sees a half-written file. This module does not import
TensorFlow."""

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
