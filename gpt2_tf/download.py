"""Download a released GPT-2 model the way OpenAI's download_model.py did, and check it.

The same seven files are fetched in the same order from the same place, `<base_url>/<name>/<file>`, into
`<models_dir>/<name>/`. base_url is OpenAI's https://openaipublic.blob.core.windows.net/gpt-2/models
unless the caller or the environment variable GPT2_BASE_URL names a mirror. Unlike the original, a
download never leaves a broken model behind:

* Only the released names are accepted. The old names 117M and 345M are aliases: they fetch the model
  from its current name's URL into its current name's folder (models/124M, models/355M), which is where
  `hparams.model_dir` looks for an alias when no folder of the old name exists.
* Every response is checked (HTTP status, length against Content-Length, no XML/HTML error page). A
  file is written as `<file>.part` and renamed when complete, so a file under its real name is always
  whole. An interrupted transfer resumes from the end of the .part file with a Range request, on the
  next attempt or the next run; files already present are not fetched again.
* Transient failures (connection errors, timeouts, HTTP 5xx/429, short bodies) are retried with
  exponential backoff; the count of retries starts again whenever an attempt made progress.
* Finally `verify_model_dir` checks the folder against the hyperparameters the model must have: the
  released ones by default, or the `hparams` argument of `download_model` (which lets tests and mirrors
  of other models use the same code). A file that fails the check is removed. If it came from an earlier
  run it is fetched again; if it was fetched just now the download fails, since the server is at fault.
* A download that fails removes the folders it created if they hold nothing (no .part file to resume).

This module does not import TensorFlow, so the downloader starts at once.
"""

import hashlib
import math
import os
import re
import sys
import time

import requests
import urllib3
from tqdm import tqdm

from gpt2_tf.checkpoint_files import DT_FLOAT, read_bundle_index
from gpt2_tf.encoder import ENDOFTEXT, load_encoder_files
from gpt2_tf.hparams import ALIASES, RELEASED, canonical_name, load_hparams, released

DEFAULT_BASE_URL = "https://openaipublic.blob.core.windows.net/gpt-2/models"

# The files of a model, in the order the original downloads them.
FILES = [
    "checkpoint",
    "encoder.json",
    "hparams.json",
    "model.ckpt.data-00000-of-00001",
    "model.ckpt.index",
    "model.ckpt.meta",
    "vocab.bpe",
]
DATA_FILE = "model.ckpt.data-00000-of-00001"

CHUNK_SIZE = 1 << 16
TIMEOUT = 60  # seconds to connect, and without data, before an attempt counts as failed

# What error pages start with (after an optional byte order mark); no model file starts with "<".
_ERROR_PAGE = re.compile(rb"(\xef\xbb\xbf)?\s*<(\?xml|!doctype|html|error)", re.IGNORECASE)


class DownloadError(Exception):
    """A download or a check failed; the message is one line."""


class BadModelDir(DownloadError):
    """A model folder failed a check; `files` are the names of the files at fault."""

    def __init__(self, directory, files, problem):
        super().__init__(f"{os.path.join(directory, files[0])}: {problem}")
        self.files = files


class _Transient(DownloadError):
    """A failure worth retrying."""


def check_model_name(model_name):
    """The canonical name of a released model (old aliases accepted); DownloadError for any other name."""
    name = canonical_name(model_name)
    if name not in RELEASED:
        raise DownloadError(
            f"unknown model {model_name!r}; valid names are {', '.join(RELEASED)} "
            f"(old names {', '.join(ALIASES)} are accepted)"
        )
    return name


def download_model(model_name, models_dir="models", base_url=None, quiet=False, hparams=None,
                   retries=5, backoff=1.0):
    """Download a released model into `models_dir/<name>/` and check it; returns the folder.

    Args:
        model_name: 124M, 355M, 774M, 1558M, or the old names 117M and 345M.
        models_dir: parent folder of the model folders.
        base_url: where the model folders are served; default $GPT2_BASE_URL, else OpenAI's.
        quiet: no output on stderr (progress bars are only shown when stderr is a terminal).
        hparams: HParams the model must have; default those of the released model.
        retries: how many times a transient failure is retried without progress.
        backoff: seconds before the first retry, doubled at each further one.

    Raises DownloadError (with a one-line message) if the folder cannot be made complete and valid.
    """
    name = check_model_name(model_name)
    expected = hparams if hparams is not None else released(name)
    base_url = (base_url or os.environ.get("GPT2_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
    path = os.path.join(os.path.expanduser(os.path.expandvars(models_dir)), name)  # as hparams.model_dir
    if name != model_name and not quiet:
        print(f"{model_name} is the old name of {name}; downloading it into {path}", file=sys.stderr)
    new_folders = _new_folders(path)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"cannot create {path}: {e.strerror or e}") from None
    try:
        return _fetch_and_verify(path, name, base_url, expected, quiet, retries, backoff)
    except BaseException:
        _remove_empty(new_folders)
        raise


def _new_folders(path):
    """`path` and the folders above it that do not exist yet, deepest first."""
    folders = []
    path = os.path.abspath(path)
    while not os.path.exists(path):
        folders.append(path)
        path = os.path.dirname(path)
    return folders


def _remove_empty(folders):
    """Remove the folders, deepest first, as long as they are empty (nothing to resume from)."""
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:
            return


def _fetch_and_verify(path, name, base_url, expected, quiet, retries, backoff):
    """Fetch the files missing from the folder `path` and check it; returns `path` (see download_model)."""
    todo = [f for f in FILES if not os.path.isfile(os.path.join(path, f))]
    fetched = set()
    with requests.Session() as session:
        # Ranges must count the bytes of the file itself, not of a compressed encoding of it.
        session.headers["Accept-Encoding"] = "identity"
        while True:
            for filename in todo:
                _fetch(session, f"{base_url}/{name}/{filename}", os.path.join(path, filename),
                       quiet, retries, backoff)
                fetched.add(filename)
            try:
                verify_model_dir(path, expected)
                return path
            except BadModelDir as e:
                for filename in e.files:
                    if os.path.exists(os.path.join(path, filename)):
                        os.remove(os.path.join(path, filename))
                if fetched.intersection(e.files):
                    raise DownloadError(f"{e} (downloaded from {base_url}/{name}/; removed)") from None
                if not quiet:
                    print(f"{e}; fetching it again", file=sys.stderr)
                todo = e.files


def _fetch(session, url, path, quiet, retries, backoff):
    """Download `url` to `path` through `path`.part, resuming and retrying."""
    part = path + ".part"
    failures = 0
    while True:
        size_before = _size(part)
        try:
            _transfer(session, url, part, show_progress=not quiet and sys.stderr.isatty())
            break
        except _Transient as e:
            failures = 1 if _size(part) > size_before else failures + 1
            if failures > retries:
                raise DownloadError(f"{e} (gave up after {retries} retries; run again to resume)") from None
            delay = backoff * 2 ** (failures - 1)
            if not quiet:
                print(f"{e}; retrying in {delay:g} s", file=sys.stderr)
            time.sleep(delay)
    with open(part, "rb") as f:
        head = f.read(512)
    if _ERROR_PAGE.match(head):
        os.remove(part)
        code = re.search(rb"<Code>(\w+)</Code>", head)
        what = f" ({code.group(1).decode()})" if code else ""
        raise DownloadError(f"cannot fetch {url}: the server sent an error page{what} instead of the file")
    os.replace(part, path)


def _size(path):
    return os.path.getsize(path) if os.path.exists(path) else 0


def _transfer(session, url, part, show_progress):
    """One attempt at completing `part` from `url`; raises _Transient or DownloadError on failure."""
    offset = _size(part)
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        with session.get(url, headers=headers, stream=True, timeout=TIMEOUT) as response:
            status = response.status_code
            if status == 416:  # nothing after `offset`: the .part is complete, or longer than the file
                if _content_range(response) == (0, offset):
                    return
                os.remove(part)
                raise _Transient(f"cannot resume {url}: the server refused bytes from {offset}")
            if status == 200:  # a full body: no Range was sent, or the server ignored it
                offset, mode = 0, "wb"
                length = response.headers.get("Content-Length")
                total = int(length) if length is not None else None
            elif status == 206:
                start, total = _content_range(response) or (None, None)
                if start != offset:
                    raise DownloadError(f"cannot fetch {url}: asked for bytes from {offset}, got "
                                        f"Content-Range {response.headers.get('Content-Range')!r}")
                mode = "ab"
            elif status >= 500 or status == 429:
                raise _Transient(f"cannot fetch {url}: HTTP {status} {response.reason}")
            else:
                raise DownloadError(f"cannot fetch {url}: HTTP {status} {response.reason}")
            filename = url.rsplit("/", 1)[1]
            with open(part, mode) as f, tqdm(total=total, initial=offset, desc=f"Fetching {filename}",
                                             unit="B", unit_scale=True, ncols=100,
                                             disable=not show_progress) as bar:
                # read1 hands over whatever has arrived, so a broken connection loses no received byte.
                while chunk := response.raw.read1(CHUNK_SIZE):
                    f.write(chunk)
                    bar.update(len(chunk))
                f.flush()
                os.fsync(f.fileno())
    except requests.exceptions.SSLError as e:  # while connecting, e.g. an untrusted certificate
        raise DownloadError(f"cannot fetch {url}: {e}") from None
    except (requests.ConnectionError, requests.Timeout, urllib3.exceptions.HTTPError) as e:
        raise _Transient(f"cannot fetch {url}: {_reason(e)}") from None
    except requests.RequestException as e:
        raise DownloadError(f"cannot fetch {url}: {e}") from None
    except OSError as e:
        raise DownloadError(f"cannot write {part}: {e.strerror or e}") from None
    size = _size(part)
    if total is not None and size < total:
        raise _Transient(f"cannot fetch {url}: connection closed after {size} of {total} bytes")
    if total is not None and size > total:
        os.remove(part)
        raise DownloadError(f"cannot fetch {url}: got {size} bytes, more than the {total} announced")


def _reason(error):
    """A short reason for a network error: the system's message if it has one, else its kind."""
    match = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(error))
    if match:
        return match.group(1)
    if isinstance(error, (requests.Timeout, urllib3.exceptions.TimeoutError)):
        return "timed out"
    return f"connection broken ({type(error).__name__})"


def _content_range(response):
    """(first byte, total size) from a Content-Range header such as 'bytes 100-199/200' or 'bytes */200'.

    None if there is no such header.
    """
    match = re.fullmatch(r"bytes (?:(\d+)-\d+|\*)/(\d+)", response.headers.get("Content-Range", "").strip())
    return (int(match.group(1) or 0), int(match.group(2))) if match else None


def verify_model_dir(path, expected=None):
    """Check that folder `path` holds a complete, consistent GPT-2 model; returns its HParams.

    Checks that all seven files are there, that `checkpoint` names model.ckpt, that hparams.json is
    valid (and equal to `expected`, an HParams, if given), that encoder.json and vocab.bpe make a
    vocabulary of n_vocab tokens (256 bytes, n_vocab - 257 merges, <|endoftext|>), that the checkpoint
    index holds exactly the model's float32 tensors with their shapes, and that the data file has the
    size of those tensors (4 bytes per parameter). Does not read the weights themselves.

    Raises BadModelDir naming the file at fault.
    """
    for filename in FILES:
        if not os.path.isfile(os.path.join(path, filename)):
            raise BadModelDir(path, [filename], "missing")
    with open(os.path.join(path, "checkpoint"), "rb") as f:
        if b'model_checkpoint_path: "model.ckpt"' not in f.read():
            raise BadModelDir(path, ["checkpoint"], "does not name model.ckpt")
    hparams_path = os.path.join(path, "hparams.json")
    try:
        hparams = load_hparams(hparams_path)
    except (OSError, ValueError) as e:
        raise BadModelDir(path, ["hparams.json"], _problem(e, hparams_path)) from None
    if expected is not None and hparams != expected:
        raise BadModelDir(path, ["hparams.json"], f"holds {hparams.to_dict()}, expected {expected.to_dict()}")
    _check_vocabulary(path, hparams.n_vocab)
    _check_checkpoint(path, hparams)
    return hparams


def _check_vocabulary(path, n_vocab):
    try:
        encoder, merges = load_encoder_files(path)
    except (OSError, ValueError) as e:
        raise BadModelDir(path, ["encoder.json", "vocab.bpe"], f"cannot read the vocabulary ({e})") from None
    ids = {i for i in encoder.values() if isinstance(i, int)} if isinstance(encoder, dict) else set()
    if len(encoder) != n_vocab or ids != set(range(n_vocab)):
        raise BadModelDir(path, ["encoder.json"], f"is not a table of tokens 0 to {n_vocab - 1}")
    if encoder.get(ENDOFTEXT) != n_vocab - 1:
        raise BadModelDir(path, ["encoder.json"], f"{ENDOFTEXT} is not token {n_vocab - 1}")
    if len(merges) != n_vocab - 257:
        raise BadModelDir(path, ["vocab.bpe"], f"has {len(merges)} merges, expected {n_vocab - 257}")
    for pair in merges:
        if len(pair) != 2 or "".join(pair) not in encoder:
            raise BadModelDir(path, ["encoder.json", "vocab.bpe"], f"merge {' '.join(pair)!r} makes no token")


def _check_checkpoint(path, hparams):
    index_path = os.path.join(path, "model.ckpt.index")
    try:
        tensors = read_bundle_index(index_path)
    except (OSError, ValueError) as e:
        raise BadModelDir(path, ["model.ckpt.index"], _problem(e, index_path)) from None
    shapes = hparams.variable_shapes()
    for name, shape in shapes.items():
        if name not in tensors:
            raise BadModelDir(path, ["model.ckpt.index"], f"has no tensor {name}")
        dtype, actual, _, size = tensors[name]
        if dtype != DT_FLOAT or actual != shape or size != 4 * math.prod(shape):
            raise BadModelDir(path, ["model.ckpt.index"], f"tensor {name} has dtype {dtype}, shape {actual} "
                              f"and {size} bytes; expected float32 (dtype {DT_FLOAT}) of shape {shape}")
    unexpected = sorted(set(tensors) - set(shapes))
    if unexpected:
        raise BadModelDir(path, ["model.ckpt.index"], f"has unexpected tensor {unexpected[0]}")
    data_size = os.path.getsize(os.path.join(path, DATA_FILE))
    expected_size = sum(entry[3] for entry in tensors.values())
    if data_size != expected_size:
        raise BadModelDir(path, [DATA_FILE], f"has {data_size} bytes, expected {expected_size}")


def _problem(error, path):
    """The message of `error` without the file name it starts with."""
    return str(error).removeprefix(path).lstrip(": ")


def download_file(url, path, sha256, quiet=False, retries=5, backoff=1.0):
    """Download `url` to `path` and check that the file's sha256 is `sha256` (hex); returns `path`.

    The transfer is the one of a model's files: written as `path`.part, resumed and retried. A file whose
    sha256 differs is removed, and is a DownloadError. The folder of `path` is created if needed.
    """
    folder = os.path.dirname(path) or "."
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"cannot create {folder}: {e.strerror or e}") from None
    with requests.Session() as session:
        session.headers["Accept-Encoding"] = "identity"  # the sha256 is of the file, not of an encoding
        _fetch(session, url, path, quiet, retries, backoff)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK_SIZE):
            digest.update(block)
    if digest.hexdigest() != sha256.lower():
        os.remove(path)
        raise DownloadError(f"cannot fetch {url}: its sha256 is {digest.hexdigest()}, expected {sha256} "
                            f"(removed {path})")
    return path
