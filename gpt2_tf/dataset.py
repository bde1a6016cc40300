"""Training data: text or token files to chunks of tokens, and the window sampler of nshepperd's train.py.

A dataset is a list of 1-D integer numpy arrays, "chunks". `load_dataset` builds one from text files,
encoding them on the fly, and from token files (token_files.py): .npz files written by encode.py (or by
the original encode.py, or numpy) and nanoGPT's .bin files, memory-mapped where they can be.
`encode_dataset` writes one as encode.py does, as a stream: memory holds the pieces in flight, never the
dataset. `Sampler` draws training windows from it exactly as the original did. Text is read and encoded
in pieces, in parallel if asked; the tokens are the same as encoding each file at once.
This module does not import TensorFlow.
"""

import bisect
import codecs
import collections
import concurrent.futures
import functools
import glob
import io
import multiprocessing
import os
import signal
import sys
import time

import numpy as np
from tqdm import tqdm

from gpt2_tf.encoder import ENDOFTEXT, Encoder, get_encoder
from gpt2_tf.fast_encoder import FastEncoder, Splitter
from gpt2_tf.files import WriteError, atomic_write
from gpt2_tf.token_files import (
    UNCOMPRESSED_FROM,
    DatasetError,
    Spool,
    blocks_of,
    changed_file,
    check_ids,
    check_output_path,
    is_token_file,
    mapped_files,
    read_tokens,
    token_writer,
)

PIECE_SIZE = 1 << 20  # characters of text per piece handed to an encoder
BLOCK_SIZE = 1 << 20  # bytes read from a file at a time


def token_dtype(n_vocab):
    """The dtype that stores token ids: uint16 when they fit (GPT-2's 50,257 do), else int32."""
    return np.dtype(np.uint16) if n_vocab <= 1 << 16 else np.dtype(np.int32)


def list_files(path, encoding="utf-8", skipped=None):
    """The input files named by `path`, in a reproducible order.

    `path` is a file (read as given, whatever it holds), a folder (every file under it, recursively, in
    sorted order) or a glob pattern (`**` matches subfolders; matches are sorted, and folders among them
    expanded). Walking a folder leaves out hidden files and folders (names starting with '.') and
    __pycache__ folders. Files found in a folder or by a pattern are left out when they are not regular
    files, clearly not text in `encoding` (see `is_binary`), or named as token files (.npz, .bin) but
    not such files (`looks_like_token_file`); the latter two are appended to the list `skipped`, if
    given. Only a token file named as `path` itself is read whatever it holds.

    A DatasetError, when nothing is found, does not repeat `path`: callers put it in front.
    """
    if os.path.exists(path) and not os.path.isdir(path):
        return [path]
    if os.path.isdir(path):
        found = _walk(path)
    else:
        found = []
        for match in sorted(glob.glob(path, recursive=True)):
            if os.path.isdir(match):
                found.extend(_walk(match))
            elif os.path.isfile(match):
                found.append(match)
    files, binary = [], []
    for name in dict.fromkeys(found):  # `**` matches a folder and the files in it
        unusable = not looks_like_token_file(name) if is_token_file(name) else is_binary(name, encoding)
        (binary if unusable else files).append(name)
    if skipped is not None:
        skipped.extend(binary)
    if files:
        return files
    if binary:
        where = "in this folder" if os.path.isdir(path) else "match this pattern"
        raise DatasetError(f"no text files {where} (skipped {_count(len(binary), 'file')} holding NUL bytes "
                           "or misnamed as token files)")
    if os.path.isdir(path):
        raise DatasetError("no files in this folder (hidden files and __pycache__ folders are not read)")
    if any(c in path for c in "*?["):
        raise DatasetError("no files match this pattern")
    raise DatasetError("no such file or folder")


def list_inputs(inputs, encoding="utf-8", skipped=None):
    """The files of several inputs (files, folders or glob patterns; see `list_files`), each once, in
    order. A DatasetError names the input at fault."""
    files = {}
    for path in inputs:
        path = os.fspath(path)
        try:
            files.update(dict.fromkeys(list_files(path, encoding, skipped)))
        except DatasetError as e:
            raise DatasetError(f"{path}: {e}") from None
    return list(files)


def _walk(folder):
    """The files under `folder`, sorted, leaving out hidden files and folders and __pycache__ folders."""
    files = []
    for parent, folders, names in os.walk(folder):
        folders[:] = [name for name in folders if not _hidden(name)]
        files.extend(os.path.join(parent, name) for name in names if not _hidden(name))
    return sorted(name for name in files if os.path.isfile(name))


def _hidden(name):
    return name.startswith(".") or name == "__pycache__"


def is_binary(path, encoding="utf-8"):
    """Whether a file is clearly not text: its first block holds a NUL byte.

    Always False for token files (.npz and .bin, read as such), for encodings whose text holds NUL bytes
    (UTF-16, UTF-32), and for files that cannot be read (reading them will say why).
    """
    if is_token_file(path) or not _nul_means_binary(encoding):
        return False
    try:
        with open(path, "rb") as f:
            return b"\0" in f.read(BLOCK_SIZE)
    except OSError:
        return False


def looks_like_token_file(path):
    """Whether a file named as a token file can be one: a .bin file of a whole number of 16-bit ids or
    more, an .npz file that starts as a zip archive does."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            start = f.read(4)
    except OSError:
        return True  # reading it will say why
    if os.fspath(path).endswith(".bin"):
        return size > 0 and size % 2 == 0
    return start in (b"PK\x03\x04", b"PK\x05\x06")


def _nul_means_binary(encoding):
    """False for encodings that write NUL bytes in ordinary text, such as UTF-16."""
    try:
        return b"\0" not in "text\n".encode(encoding)
    except (LookupError, UnicodeError):
        return True


def read_text(path, encoding, errors, on_read):
    """Yield the text of a file in blocks, decoded as `open(path, encoding=encoding)` would.

    Newlines are translated ('\\r\\n' and '\\r' become '\\n') as text mode does, so the tokens equal the
    original's. A decoding error names the file and the byte offset.
    """
    decoder = codecs.getincrementaldecoder(encoding)(errors)
    newlines = io.IncrementalNewlineDecoder(decoder, translate=True)
    offset = 0
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DatasetError(f"cannot read {path}: {e.strerror}") from None
    with f:
        while True:
            try:
                data = f.read(BLOCK_SIZE)
            except OSError as e:
                raise DatasetError(f"cannot read {path}: {e.strerror}") from None
            try:
                text = newlines.decode(data, final=not data)
            except UnicodeDecodeError as e:
                at = offset - len(decoder.getstate()[0]) + e.start
                raise DatasetError(f"{path}: not valid {encoding} at byte {at} ({e.reason}); "
                                   f"pass the right --encoding, or --errors replace") from None
            on_read(len(data))
            yield text
            if not data:
                return
            offset += len(data)


def _partial_endoftext(text):
    """How many characters at the end of text could be the start of an `<|endoftext|>`."""
    for n in range(min(len(ENDOFTEXT) - 1, len(text)), 0, -1):
        if ENDOFTEXT.startswith(text[-n:]):
            return n
    return 0


def text_work(blocks, splitter, eot):
    """Work items for the text of one file; returns its length in characters.

    With `eot` (an array holding the `<|endoftext|>` id), each literal `<|endoftext|>` in the text becomes
    that token, and the file is encoded on its own. Without, the text goes on the splitter's stream, to
    be encoded together with whatever follows it in the chunk.
    """
    chars = 0
    carry = ""
    for text in blocks:
        chars += len(text)
        if eot is None:
            for piece in splitter.feed(text):
                yield "text", piece
            continue
        parts = (carry + text).split(ENDOFTEXT)
        for part in parts[:-1]:
            for piece in splitter.feed(part) + [splitter.finish()]:
                if piece:
                    yield "text", piece
            yield "tokens", eot
        keep = _partial_endoftext(parts[-1])
        carry = parts[-1][len(parts[-1]) - keep:]
        for piece in splitter.feed(parts[-1][:len(parts[-1]) - keep]):
            yield "text", piece
    if eot is not None:
        for piece in splitter.feed(carry) + [splitter.finish()]:
            if piece:
                yield "text", piece
    return chars


class _Kept:
    """A `wanted` (see load_dataset) that counts the documents it keeps."""

    def __init__(self, wanted):
        self.wanted, self.count = wanted, 0

    def __call__(self):
        keep = self.wanted()
        self.count += keep
        return keep


def _work(paths, combine, encoding, errors, eot, piece_size, n_vocab, bin_dtype, text_format, wanted,
          on_read, totals):
    """The dataset as a sequence of work items, in order.

    Items are ("text", str) to encode, ("tokens", array) to add to the current chunk, ("chunk", array)
    for a chunk of its own (an array of a token file), and ("end", None) to close the current chunk. The
    grouping is the original's: text files are joined until the joined text (with 13 characters for each
    separator) reaches `combine` characters; token files' arrays are passed through as they come. A text
    file's text is read as `text_format` says (documents.joined: CSV rows, JSON Lines, lines), and only
    the documents that `wanted` (if given) wants are kept: a token file's arrays are documents too, and
    `wanted` is asked once for each in turn. `totals` counts the characters of text and the tokens from
    token files.
    """
    from gpt2_tf.documents import TextFormat, joined  # here: sample.py reads prompts, never documents

    text_format = text_format or TextFormat()
    splitter = Splitter(piece_size)
    chunk_chars = 0

    def finish_stream():
        rest = splitter.finish()
        return [("text", rest)] if rest else []

    for path in paths:
        if is_token_file(path):
            for array in read_tokens(path, n_vocab, bin_dtype):
                if wanted is None or wanted():
                    totals["file tokens"] += len(array)
                    yield "chunk", array
            on_read(os.path.getsize(path))
            continue
        kept = None if wanted is None else _Kept(wanted)
        blocks = joined(path, read_text(path, encoding, errors, on_read), text_format, kept)
        chars = yield from text_work(blocks, splitter, eot)
        if kept is not None and not kept.count:
            continue  # nothing of the file is kept: no separator after it either
        totals["characters"] += chars
        chunk_chars += chars
        if chunk_chars >= combine:
            yield from finish_stream()
            yield "end", None
            chunk_chars = 0
        elif eot is None:
            for piece in splitter.feed(ENDOFTEXT):
                yield "text", piece
            chunk_chars += len(ENDOFTEXT)
        else:
            yield "tokens", eot
            chunk_chars += len(ENDOFTEXT)
    if chunk_chars:
        yield from finish_stream()
        yield "end", None


@functools.lru_cache(maxsize=4)
def _fast_encoder(enc):
    return FastEncoder.build(enc)


def _encode_function(enc, fast_enc, dtype):
    """A function from text to an array of token ids of `dtype`."""
    if fast_enc is not None:
        return lambda text: fast_enc.encode_array(text).astype(dtype)
    return lambda text: np.array(enc.encode(text), dtype=dtype)


_worker_encode = None


def _init_worker(encoder, merges, dtype):
    global _worker_encode
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent process handles Ctrl-C
    _worker_encode = _encode_function(Encoder(encoder, merges), None, dtype)


def _encode_in_worker(text):
    return _worker_encode(text)


def _encoded(work, encode, jobs, worker_args=None):
    """The work items with each ("text", piece) replaced by ("tokens", array), in order.

    With jobs > 1 the pieces are encoded in parallel: by threads when `worker_args` is None (tiktoken
    releases the GIL), else by processes, each set up with `_init_worker(*worker_args)`. At most
    2 * jobs items are in flight, so reading never runs far ahead of encoding.
    """
    if jobs <= 1:
        for kind, value in work:
            yield ("tokens", encode(value)) if kind == "text" else (kind, value)
        return
    if worker_args is None:
        pool, function = concurrent.futures.ThreadPoolExecutor(jobs), encode
    else:
        pool = concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                                      initializer=_init_worker, initargs=worker_args)
        function = _encode_in_worker
    try:
        window = collections.deque()
        for kind, value in work:
            if kind == "text":
                kind, value = "tokens", pool.submit(function, value)
            window.append((kind, value))
            while len(window) > 2 * jobs:
                kind, value = window.popleft()
                yield kind, value.result() if isinstance(value, concurrent.futures.Future) else value
        while window:
            kind, value = window.popleft()
            yield kind, value.result() if isinstance(value, concurrent.futures.Future) else value
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def load_dataset(enc, path, combine=50000, encoding="utf-8", errors="strict", literal_endoftext=False,
                 fast=True, jobs=1, progress=True, piece_size=PIECE_SIZE, bin_dtype="uint16",
                 text_format=None, wanted=None):
    """Load a dataset: a list of 1-D integer token arrays ("chunks").

    Args:
        enc: the reference `Encoder` of the model.
        path: a file, folder or glob pattern (see `list_files`), or a list of them (see
            `list_inputs`). Text files are encoded; the arrays of token files (.npz, .bin) are added as
            they are, each a chunk, memory-mapped where the file allows (see token_files.read_tokens).
            Files found in folders or by patterns that are clearly not text are skipped.
        combine: text files are joined until the text reaches this many characters, then encoded as one
            chunk, as in the original.
        encoding, errors: how text files are decoded (errors: 'strict' or 'replace').
        literal_endoftext: False (default): files are separated by the `<|endoftext|>` token, and that
            text in a file becomes the token too. True: the original's behaviour, where the separator is
            the text `<|endoftext|>`, encoded as 7 ordinary tokens.
        fast: use tiktoken (same tokens) when it is installed.
        jobs: how many pieces are encoded in parallel (by threads with tiktoken, else by processes);
            the result does not depend on it.
        progress: show a progress bar on stderr.
        piece_size: characters per piece of text encoded at a time.
        bin_dtype: the dtype of the ids in .bin files (nanoGPT's are uint16).
        text_format: how text files are cut into documents (documents.TextFormat: .csv and .jsonl
            files by rows, plain text whole or line by line); default TextFormat().
        wanted: None, or a callable asked once for each document in turn (a text file, or each of its
            documents by `text_format`; each array of a token file) which says whether to keep it:
            documents.Numbered, for a held-out split.
    """
    fast_enc = _fast_encoder(enc) if fast else None
    chunks, pending = [], []
    for kind, value in _items(enc, fast_enc, path, combine, encoding or "utf-8", errors, literal_endoftext,
                              jobs or 1, progress, piece_size, bin_dtype, text_format, wanted):
        if kind == "chunk":
            chunks.append(value)
        elif kind == "tokens":
            pending.append(value)
        elif pending:
            chunks.append(np.concatenate(pending) if len(pending) > 1 else pending[0])
            pending = []
    return chunks


def count_documents(path, encoding="utf-8", errors="strict", text_format=None, bin_dtype="uint16"):
    """How many documents the files of `path` (see list_files) hold, numbered as load_dataset's and
    score.load_documents' `wanted` numbers them: each array of a token file, each plain text file, and
    the documents of the others by `text_format` (documents.documents)."""
    from gpt2_tf.documents import TextFormat, documents, form

    text_format = text_format or TextFormat()
    check_decoding(encoding, errors)
    count = 0
    for file in list_files(os.fspath(path), encoding):
        if is_token_file(file):
            count += len(read_tokens(file, None, bin_dtype))
        elif form(file, text_format) == "text":
            count += 1
        else:
            count += sum(1 for _ in documents(file, read_text(file, encoding, errors, lambda size: None),
                                              text_format))
    return count


def check_decoding(encoding, errors):
    """Raise DatasetError unless `encoding` is a known text encoding and `errors` is strict or replace."""
    if errors not in ("strict", "replace"):
        raise DatasetError(f"errors must be 'strict' or 'replace', not {errors!r}")
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise DatasetError(f"unknown encoding {encoding!r}") from None
    try:
        "".encode(encoding)
    except LookupError:  # a codec from bytes to bytes, such as base64
        raise DatasetError(f"{encoding!r} is not a text encoding") from None


def _items(enc, fast_enc, path, combine, encoding, errors, literal_endoftext, jobs, progress, piece_size,
           bin_dtype, text_format, wanted=None):
    """The dataset of `path` as ("tokens", array), ("end", None) and ("chunk", array) items (see `_work`),
    the text encoded, with a progress bar. An input without text or tokens is a DatasetError."""
    start = time.time()
    check_decoding(encoding, errors)
    one_input = isinstance(path, (str, os.PathLike))
    paths = list_files(os.fspath(path), encoding) if one_input else list_inputs(path, encoding)
    if not paths:
        raise DatasetError("no input files")
    n_vocab = max(enc.encoder.values()) + 1
    dtype = token_dtype(n_vocab)
    eot = None
    if not literal_endoftext:
        if enc.eot_token is None:
            raise DatasetError(f"the vocabulary has no {ENDOFTEXT} token; use literal_endoftext")
        eot = np.array([enc.eot_token], dtype=dtype)
    encode = _encode_function(enc, fast_enc, dtype)
    total_bytes = sum(os.path.getsize(p) for p in paths if os.path.isfile(p))
    if total_bytes < 2 * piece_size:
        jobs = 1  # not worth starting threads or processes
    worker_args = None
    if fast_enc is None and jobs > 1:
        worker_args = (enc.encoder, sorted(enc.bpe_ranks, key=enc.bpe_ranks.get), dtype)

    encoding_text = not all(is_token_file(p) for p in paths)  # token files are only loaded
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc="Encoding",
               disable=not (progress and encoding_text), dynamic_ncols=True)
    totals = collections.Counter()
    work = _work(paths, combine, encoding, errors, eot, piece_size, n_vocab, bin_dtype, text_format, wanted,
                 bar.update, totals)
    tokens = 0
    with bar:
        for kind, value in _encoded(work, encode, jobs, worker_args):
            if kind == "tokens":
                tokens += len(value)
                bar.set_postfix_str(f"{tokens / max(time.time() - start, 1e-9):,.0f} tokens/s", refresh=False)
            yield kind, value
    if not totals["characters"] and not totals["file tokens"]:
        if one_input:  # the caller names it
            raise DatasetError("no text: the input is empty")
        where = paths[0] if len(paths) == 1 else f"any of the {len(paths)} input files"
        raise DatasetError(f"no text in {where}: the input is empty")


def encode_dataset(in_text, out_npz, model_name="124M", models_dir="models", combine=50000,
                   encoding="utf-8", errors="strict", literal_endoftext=False, jobs=None, fast=True,
                   quiet=False, skipped=(), compress=None, bin_dtype="uint16", text_format=None):
    """What encode.py does: encode the files of `in_text` into the token file `out_npz`.

    `in_text` is a file, folder or glob pattern, or a list of them (see `list_inputs`). `skipped` names
    files the caller's own listing left out as not text, to be counted with those left out here.
    `text_format` says how text files are cut into documents (see load_dataset). The output is an .npz
    file (`.npz` is appended to a name that ends neither so), or with a name ending in .bin a flat file
    of ids as nanoGPT writes them: the chunks one after another, each followed by `<|endoftext|>` unless
    it ends with it. It is written as the text is encoded, atomically: memory holds the pieces in
    flight and at most token_files.SPOOL_BYTES of the chunk being built.
    compress: deflate the .npz members; None (default) compresses inputs smaller than UNCOMPRESSED_FROM
    bytes in all and stores the others uncompressed, to be memory-mapped.
    Returns a one-line summary (files, bytes, tokens, chunks, seconds). Problems with the input raise
    DatasetError, a failed write (a full disk) files.WriteError, each with a one-line message.
    """
    start = time.time()
    out = check_output_path(out_npz)
    try:
        enc = get_encoder(model_name, models_dir)
    except FileNotFoundError as e:
        raise DatasetError(f"no tokenizer: {e.filename} not found (is {models_dir!r} the right folder of "
                           "models?)") from None
    check_decoding(encoding or "utf-8", errors)
    skipped = list(skipped)
    inputs = [in_text] if isinstance(in_text, (str, os.PathLike)) else in_text
    paths = list_inputs(inputs, encoding or "utf-8", skipped)
    n_bytes = sum(os.path.getsize(p) for p in paths if os.path.isfile(p))
    if compress is None:
        compress = n_bytes < UNCOMPRESSED_FROM
    jobs = jobs or default_jobs()
    dtype = token_dtype(max(enc.encoder.values()) + 1)
    fast_enc = _fast_encoder(enc) if fast else None
    if not quiet:
        print(f"Encoding into {out}" + ("" if compress or out.endswith(".bin") else " (uncompressed)"),
              file=sys.stderr if out == "-" else sys.stdout)
    items = _items(enc, fast_enc, paths, combine, encoding or "utf-8", errors, literal_endoftext, jobs,
                   not quiet, PIECE_SIZE, bin_dtype, text_format)
    try:
        with (atomic_write(out) as f, token_writer(f, out, dtype, compress, enc.eot_token) as writer,
              Spool(dtype, os.path.dirname(out) or ".") as spool):
            for kind, value in items:
                if kind == "chunk":
                    writer.add(blocks_of(value), len(value))
                elif kind == "tokens":
                    spool.add(value)
                elif spool.length:
                    writer.add(spool.blocks(), spool.length)
                    spool.clear()
    except (BrokenPipeError, WriteError):
        raise
    except OSError as e:  # the spool beside the output
        raise WriteError(e.errno, f"cannot write {out}: {e.strerror}") from None
    seconds = time.time() - start
    encoder_name = "tiktoken" if fast_enc is not None else "reference encoder"
    files = _count(len(paths), "file") + (f" ({len(skipped):,} more skipped as not text)" if skipped else "")
    arrays = "" if out.endswith(".bin") else f", {_count(writer.count, 'chunk')}"
    tokens = _count(writer.tokens, "token")
    return (f"{files}, {_count(n_bytes, 'byte')}, {tokens}{arrays} in {seconds:.1f} s "
            f"({n_bytes / 1e6 / max(seconds, 1e-9):.1f} MB/s, {encoder_name}, {_count(jobs, 'job')})")


def _count(n, noun):
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def default_jobs():
    """The number of CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class Sampler:
    """Draws windows of tokens from a list of chunks, as nshepperd's train.py does.

    Windows are spread as in one concatenated stream but never cross a chunk boundary: a random start is
    drawn over all tokens and drawn again until the window fits in its chunk. For a given seed the
    windows are the original's (the same RandomState calls in the same order), quirks included: the last
    token of a chunk is never sampled, and the last start position of the last chunk is never drawn.
    `sampler.rs` is the numpy RandomState; its get_state()/set_state() save and restore the position.

    Memory-mapped chunks are checked as they are used: with `n_vocab`, each window's ids are checked
    (loading checked only the ends of the file), and before each window, that the mapped files are
    unchanged (a file shortened under a mapping would kill the process on reading). Either problem is a
    DatasetError.
    """

    def __init__(self, chunks, seed=None, n_vocab=None):
        self.chunks = chunks
        self.total_size = sum(len(chunk) for chunk in chunks)
        self.boundaries = [0]
        for chunk in chunks:
            self.boundaries.append(self.boundaries[-1] + len(chunk))
        self.rs = np.random.RandomState(seed=seed)
        self.n_vocab = n_vocab
        self.files = mapped_files(chunks)
        self._possible = set()

    def sample(self, length):
        """A window of `length` tokens (a view into one chunk)."""
        self._check(length)
        while True:
            index = self.rs.randint(0, self.total_size - length - 1)
            i = bisect.bisect_right(self.boundaries, index) - 1
            if self.boundaries[i + 1] > index + length:
                within = index - self.boundaries[i]
                return self._checked(self.chunks[i][within:within + length], i, within)

    def _checked(self, window, i, within):
        if not isinstance(window, np.memmap):
            return window
        problem = changed_file(self.files)
        if problem:
            raise DatasetError(f"{problem}: a token file must not change while it is being read; keep the "
                               "old one until the run ends, or stop the run first")
        if self.n_vocab is not None:
            where = f"{window.filename}: chunk {i} at token {within:,}"
            check_ids(window, self.n_vocab, window.filename, where)
        return window

    def _check(self, length):
        if length in self._possible:
            return
        # The original asserted that the average chunk is longer than `length`. Windows can still be
        # impossible (a single chunk of length + 1 tokens): refuse those too instead of looping forever.
        n = len(self.chunks)
        last_start = self.total_size - length - 2
        sizes = np.diff(self.boundaries)
        starts = np.array(self.boundaries[:-1])
        possible = bool(np.any((sizes > length) & (starts <= last_start)))
        if n == 0 or length >= self.total_size // n or not possible:
            raise ValueError(f"dataset too small for {length}-token windows: it has {self.total_size} tokens"
                             + (f" in {n} chunks" if n > 1 else ""))
        self._possible.add(length)
