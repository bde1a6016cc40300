"""Writing outputs safely: a file is written under a temporary name beside it and renamed into place
when complete, so a reader (or a crash) never sees a half-written file, and what a path points at is
never replaced; and what stops a file or folder from being written. This module does not import
TensorFlow.

Where an output goes (`output_target`), as a careful Unix tool writes it:

- `-`: standard output.
- a regular file, or a path where nothing is yet: written atomically.
- a symbolic link: followed; its target is written atomically (the link stays a link).
- anything else (a named pipe, a character device such as /dev/null, /dev/stdout and the other files
  under /dev and /proc): written to directly, in order, without a temporary file.
"""

import contextlib
import errno
import io
import os
import stat
import sys
import tempfile

STDOUT = "-"


def output_target(path):
    """(how, where) for writing `path`: ("stdout", None), ("direct", path) or ("atomic", the regular
    file to replace, symbolic links followed)."""
    if path == STDOUT:
        return "stdout", None
    current = os.path.abspath(path)
    for _ in range(40):  # as the kernel's limit on symbolic links in a row
        if current.startswith(("/dev/", "/proc/")):
            return "direct", path
        if not os.path.islink(current):
            break
        current = os.path.join(os.path.dirname(current), os.readlink(current))
        current = os.path.abspath(current)
    else:
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
    try:
        mode = os.stat(current).st_mode
    except FileNotFoundError:
        return "atomic", os.path.realpath(current)
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    if not stat.S_ISREG(mode):
        return "direct", path
    return "atomic", os.path.realpath(current)


def is_stdout(path):
    """Whether writing `path` writes this process's standard output (`-`, /dev/stdout, /dev/fd/1, or the
    very file or pipe that standard output is)."""
    if path == STDOUT:
        return True
    try:
        here, out = os.stat(path), os.fstat(sys.stdout.fileno())
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return False
    return (here.st_dev, here.st_ino) == (out.st_dev, out.st_ino)


@contextlib.contextmanager
def atomic_write(path, encoding=None, errors="strict"):
    """Open `path` for writing, binary or text in `encoding`, where `output_target` says.

    For a regular file: a temporary file beside it (beside a symbolic link's target), which replaces
    it on success and is removed on error. The file gets the usual permissions of a new file (mkstemp
    would make it private), or keeps those of the file it replaces. A failed write (a full disk, a
    read-only file system) is a WriteError naming `path`, never the temporary file.
    """
    text = {"mode": "w", "encoding": encoding, "errors": errors} if encoding else {"mode": "wb"}
    how, target = output_target(path)
    if how == "stdout":
        sys.stdout.flush()
        out = sys.stdout.buffer
        if encoding:
            out = io.TextIOWrapper(out, encoding=encoding, errors=errors, write_through=True)
        try:
            yield Guarded(out, path)
            with _named(path):
                out.flush()
        finally:
            if encoding:
                out.detach()
        return
    if how == "direct":
        sys.stdout.flush()  # a device such as /dev/stdout shares what this process printed
        with _named(path):
            f = open(path, **text)
        with contextlib.closing(Guarded(f, path)) as guarded:
            yield guarded
        return
    with _named(path):
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=os.path.basename(target) + ".",
                                   suffix=".tmp")
    try:
        with contextlib.closing(Guarded(os.fdopen(fd, **text), path)) as guarded:
            yield guarded
        with _named(path):
            os.chmod(tmp, _new_file_mode(target))
            os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class Guarded:
    """A file whose writes, flushes and closing raise WriteError naming `path` when they fail; anything
    else is the file's own."""

    def __init__(self, file, path):
        self._file = file
        self._path = path

    def write(self, data):
        with _named(self._path):
            return self._file.write(data)

    def writelines(self, lines):
        with _named(self._path):
            return self._file.writelines(lines)

    def flush(self):
        with _named(self._path):
            return self._file.flush()

    def close(self):
        with _named(self._path):
            return self._file.close()

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __iter__(self):
        return iter(self._file)


def _new_file_mode(target):
    """The permissions `target` has (when it exists), else those of a new file under the umask."""
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


class WriteError(OSError):
    """An output that could not be written; its text is one line naming the file the user gave."""

    def __str__(self):
        return self.strerror


@contextlib.contextmanager
def _named(path):
    """Re-raise an OSError as a WriteError about `path`, `cannot write PATH: <reason>`, never naming the
    temporary file. A broken pipe stays what it is (the reader went away)."""
    try:
        yield
    except OSError as e:
        if isinstance(e, (BrokenPipeError, WriteError)):
            raise
        raise WriteError(e.errno, f"cannot write {path}: {e.strerror or e}") from None


def write_problem(path):
    """Why a file cannot be written at `path` (None when it can): a missing folder, a folder at that
    name, a folder or file without write permission, a read-only file system."""
    if path == STDOUT:
        return None
    try:
        how, target = output_target(path)
    except IsADirectoryError:
        return f"{path} is a folder; give a file name"
    except OSError as e:
        return f"cannot write {path}: {e.strerror}"
    if how == "direct":
        return None if os.access(path, os.W_OK) else f"cannot write {path}: permission denied"
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        return f"cannot write {path}: folder {os.path.dirname(path) or '.'} does not exist"
    return unwritable(folder) or (None if not os.path.exists(target) or os.access(target, os.W_OK)
                                  else f"cannot write {path}: permission denied")


def unwritable(folder):
    """Why files cannot be made in the existing `folder` (None when they can), in one phrase."""
    if os.access(folder, os.W_OK | os.X_OK):
        return None
    try:
        read_only = os.statvfs(folder).f_flag & os.ST_RDONLY
    except (OSError, AttributeError):
        read_only = False
    reason = "it is on a read-only file system" if read_only else "no permission to write in it"
    return f"cannot write in {folder}: {reason}"


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


def folder_problem(path):
    """Why a folder cannot be at `path` or be written in (None when it can): it or a folder above it
    is a file, or the nearest existing folder cannot be written in."""
    blocking = blocking_file(path)
    if blocking == os.path.abspath(path):
        return f"{path} is a file, not a folder"
    if blocking:
        return f"{path}: {blocking} is a file, not a folder"
    return unwritable(nearest_existing(path))


# ---------------------------------------------------------------------------------------------------
# One writer per folder.

LOCK_FILE = ".lock"


class Held(Exception):
    """The folder is held by another process (`pid`, None when it cannot be told)."""

    def __init__(self, folder, pid):
        super().__init__(f"{folder} is in use by " + (f"process {pid}" if pid else "another process"))
        self.folder = folder
        self.pid = pid


class FolderLock:
    """An exclusive hold on a folder, for the one process that writes in it (a training run).

    The hold is an advisory lock (flock) on `<folder>/.lock`, which also names the holder's pid.
    The system releases it when the holder exits in any way (kill -9 and power loss included), so a
    folder is never locked for ever; the file stays. A folder that the hold itself made, and that
    holds nothing else when the hold is released (the run stopped before writing anything), is
    removed again. Readers do not take it. Where the system has no flock, nothing is locked.
    """

    def __init__(self, folder):
        self.folder = folder
        self.fd = None
        self.made = []  # the folders acquire() made, deepest first

    def acquire(self):
        """Take the hold, making the folder if needed; raises Held when another process has it."""
        try:
            import fcntl
        except ImportError:
            return self
        missing = []
        parent = os.path.abspath(self.folder)
        while not os.path.isdir(parent):
            missing.append(parent)
            parent = os.path.dirname(parent)
        os.makedirs(self.folder, exist_ok=True)
        self.made = missing
        path = os.path.join(self.folder, LOCK_FILE)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                text = os.read(fd, 64).decode("ascii", "replace").strip()
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise Held(self.folder, int(text) if text.isdigit() else None) from None
            try:
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    break  # the file locked is the one at `path` (not one removed by a releasing holder)
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def release(self):
        """Give the hold up; remove the folders acquire() made if they hold nothing but the lock."""
        if self.fd is None:
            return
        try:
            if self.made and os.listdir(self.folder) == [LOCK_FILE]:
                os.remove(os.path.join(self.folder, LOCK_FILE))
                for folder in self.made:
                    os.rmdir(folder)
        except OSError:
            pass  # something else was put there meanwhile: leave it
        finally:
            os.close(self.fd)  # closing the only descriptor releases the lock
            self.fd = None

    def __enter__(self):
        return self if self.fd is not None else self.acquire()

    def __exit__(self, *exc):
        self.release()
