"""Atomic file writes: a file is written under a temporary name beside it and renamed into place when
complete, so a reader (or a crash) never sees a half-written file. This module does not import
TensorFlow."""

import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_write(path):
    """Open a temporary binary file beside `path`; on success it replaces `path`, on error it is removed.

    The file gets the usual permissions of a new file (mkstemp would make it private).
    """
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=os.path.basename(path) + ".",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
