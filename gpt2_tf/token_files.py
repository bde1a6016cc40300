"""Token files: .npz archives of token arrays and nanoGPT's flat .bin files, read memory-mapped where
they can be and written as a stream.

An .npz file is a zip archive of .npy arrays arr_0, arr_1, ... (`np.savez` and encode.py write it; the
original encode.py wrote int64 arrays, encode.py writes uint16). A member stored without compression is
memory-mapped: its offset comes from the zip directory and the member's local header, its dtype and
shape from its .npy header, so that opening a file of any size reads a few bytes. Compressed members are
read into memory. A .bin file is nanoGPT's: token ids one after the other, no header (uint16 unless told
otherwise), memory-mapped as one array.

Memory-mapped arrays are np.memmap views of the file, read-only. Their token ids are checked at the
start and the end when loaded (a full scan would read the whole file); the rest as they are used
(dataset.Sampler checks every window it draws, and that the files it maps have not changed).
This module does not import TensorFlow.
"""

import contextlib
import functools
import os
import re
import struct
import tempfile
import zipfile

import numpy as np

from gpt2_tf.files import WriteError, atomic_write, write_problem

TOKEN_SUFFIXES = (".npz", ".bin")
BIN_DTYPES = ("uint16", "uint32", "int32")  # nanoGPT writes uint16
# Outputs whose inputs total at least this many bytes are written uncompressed, so that they can be
# memory-mapped: about 128 M tokens, 256 MiB of uint16 that every training process would hold otherwise.
UNCOMPRESSED_FROM = 512 << 20
# Deflate level of compressed .npz files. numpy's default (6) takes 2.5 times as long on token ids, for
# files 10-15% smaller.
ZIP_LEVEL = 1
BLOCK_TOKENS = 1 << 20  # tokens copied, written or checked at a time
EDGE_TOKENS = 1 << 16  # ids checked at each end of a memory-mapped array when it is loaded
SPOOL_BYTES = 64 << 20  # a chunk being written is kept in memory up to this size, then in a temporary file
# The first bytes of an .npz file (a zip archive, or an empty one) and of an .npy file (a single array).
ZIP_STARTS = (b"PK\x03\x04", b"PK\x05\x06")
NPY_START = b"\x93NUMPY"
LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # a zip member's local header; the last two: name, extra sizes
# The .npy header of a 1-D integer array as numpy writes it.
SIMPLE_HEADER = re.compile(rb"\{'descr': '([<>|][iu][1248])', 'fortran_order': False, "
                           rb"'shape': \((\d+),\), \} *\n")


class DatasetError(ValueError):
    """A problem with the input or output files of a dataset, said in one line."""


def is_token_file(path):
    """Whether `path` names a token file (.npz or .bin) rather than text."""
    return os.fspath(path).endswith(TOKEN_SUFFIXES)


def read_tokens(path, n_vocab=None, bin_dtype="uint16"):
    """The token arrays of a token file: an .npz file's arrays in stored order, or a .bin file as one.

    Uncompressed .npz members and .bin files come back memory-mapped (np.memmap, read-only); their ids
    are checked at both ends here, and elsewhere as they are used. In-memory arrays are checked whole.
    With `n_vocab`, ids outside 0..n_vocab-1 are a DatasetError.
    """
    path = os.fspath(path)
    arrays = read_bin(path, bin_dtype) if path.endswith(".bin") else read_npz(path)
    if n_vocab is not None:
        for name, array in arrays:
            if not isinstance(array, np.memmap):
                check_ids(array, n_vocab, path, f"{path}: {name}")
        mapped = [(name, array) for name, array in arrays if isinstance(array, np.memmap)]
        for name, ids in _edges(mapped) + _edges((name, a[::-1]) for name, a in reversed(mapped)):
            check_ids(ids, n_vocab, path, f"{path}: {name}")
    return [array for _, array in arrays]


def read_npz(path):
    """[(name, 1-D integer array)] of an .npz file: members stored uncompressed memory-mapped, the others
    read. Nothing is unpickled; anything but 1-D integer arrays is refused."""
    _check_npz_start(path)
    try:
        with zipfile.ZipFile(path) as archive, open(path, "rb") as f:
            # One mapping of the whole file, of which members are views: a mapping per member would
            # exhaust the process's mappings (vm.max_map_count, 65,530) on a corpus of small chunks.
            whole = None
            arrays = []
            for info in archive.infolist():
                name = info.filename[:-len(".npy")] if info.filename.endswith(".npy") else info.filename
                if info.compress_type == zipfile.ZIP_STORED:
                    if whole is None:
                        whole = np.memmap(path, np.uint8, mode="r")
                    array = _map_member(path, f, whole, info, name)
                else:
                    with archive.open(info) as member:
                        array = _read_member(member, name, path)
                arrays.append((name, array))
            return arrays
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError) as e:
        if isinstance(e, DatasetError):
            raise
        raise DatasetError(f"{path}: not a valid .npz file ({e}); is it truncated? Write it again") from None


def _check_npz_start(path):
    """Raise DatasetError unless the file starts as an .npz file (a zip archive) does."""
    try:
        with open(path, "rb") as f:
            start = f.read(len(NPY_START))
    except OSError as e:
        raise DatasetError(f"cannot read {path}: {e.strerror}") from None
    if start.startswith(NPY_START):
        raise DatasetError(f"{path}: not an .npz file: it is a single .npy array (np.save, not np.savez)")
    if not start.startswith(ZIP_STARTS):
        raise DatasetError(f"{path}: not an .npz file: it is not a zip archive, as .npz files are")


def _read_header(f, name, path):
    """(dtype, length) from the .npy header at the position of `f`, which is left at the data.

    The header numpy writes for a plain 1-D array is read by a pattern; any other by numpy's parser,
    which costs 45 microseconds (ast.literal_eval): 7.5 s of opening a 4 GB corpus of 167,000 chunks.
    """
    start = f.tell()
    magic = f.read(len(NPY_START) + 2)
    if magic[:len(NPY_START)] != NPY_START:
        raise DatasetError(f"{path}: {name} is not an .npy array")
    if magic[-2] in (1, 2):
        size_bytes = 2 if magic[-2] == 1 else 4
        found = SIMPLE_HEADER.fullmatch(f.read(int.from_bytes(f.read(size_bytes), "little")))
        if found:
            return _dtype(found[1]), int(found[2])
    f.seek(start)
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise DatasetError(f"{path}: {name} is an .npy array of version {version}, which holds no token ids")
    if dtype.hasobject:
        raise DatasetError(f"{path}: holds pickled Python objects, not token arrays; refusing to load it")
    if len(shape) != 1 or not np.issubdtype(dtype, np.integer):
        raise DatasetError(f"{path}: {name} is not a 1-D array of token ids (dtype {dtype}, shape {shape})")
    return dtype, shape[0]


@functools.lru_cache
def _dtype(descr):
    return np.dtype(descr.decode())


def _read_member(member, name, path):
    """A compressed member, read into memory."""
    dtype, length = _read_header(member, name, path)
    array = np.frombuffer(member.read(length * dtype.itemsize), dtype)
    if len(array) != length:
        raise DatasetError(f"{path}: {name} is shorter than its header says; is the file truncated?")
    return array.copy()  # writable, as the arrays np.load gives


def _map_member(path, f, whole, info, name):
    """A member stored without compression: a view of `whole`, the file memory-mapped as bytes."""
    f.seek(info.header_offset)
    fields = LOCAL_HEADER.unpack(f.read(LOCAL_HEADER.size))
    if fields[0] != b"PK\x03\x04":
        raise DatasetError(f"{path}: {name}'s zip entry is damaged; write the file again")
    start = info.header_offset + LOCAL_HEADER.size + fields[-2] + fields[-1]
    f.seek(start)
    dtype, length = _read_header(f, name, path)
    offset = f.tell()
    if offset - start + length * dtype.itemsize != info.file_size:
        raise DatasetError(f"{path}: {name} holds {info.file_size} bytes, which does not match its "
                             ".npy header; write the file again")
    end = offset + length * dtype.itemsize
    if end > len(whole):
        raise DatasetError(f"{path}: the file ends inside {name}; is it truncated? Write it again")
    if length == 0:
        return np.zeros(0, dtype)
    return whole[offset:end].view(dtype)


def read_bin(path, dtype="uint16"):
    """[("tokens", array)]: a flat file of token ids (nanoGPT's train.bin), memory-mapped."""
    if dtype not in BIN_DTYPES:
        raise DatasetError(f"a .bin dtype must be one of {', '.join(BIN_DTYPES)}, not {dtype!r}")
    dtype = np.dtype(dtype)
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise DatasetError(f"cannot read {path}: {e.strerror}") from None
    if size % dtype.itemsize:
        raise DatasetError(f"{path}: {size:,} bytes is not a whole number of {dtype} token ids "
                             f"({dtype.itemsize} bytes each); is it truncated, or are its ids not {dtype}?")
    if size == 0:
        return [("tokens", np.zeros(0, dtype))]
    return [("tokens", np.memmap(path, dtype, mode="r"))]


def _edges(arrays):
    """[(name, ids)]: the first EDGE_TOKENS ids of the named arrays [(name, array)], taken in order."""
    edges, left = [], EDGE_TOKENS
    for name, array in arrays:
        if left <= 0:
            break
        edges.append((name, array[:left]))
        left -= len(array)
    return edges


def check_ids(ids, n_vocab, path, where=None):
    """Raise DatasetError when an id is outside 0..n_vocab-1, naming the file `path` (`where`: the place
    in it, said in full) and the likely causes. Large arrays are checked a block at a time."""
    for start in range(0, len(ids), BLOCK_TOKENS):
        block = ids[start:start + BLOCK_TOKENS]
        if block.size and (block.min() < 0 or block.max() >= n_vocab):
            bad = int(block[(block < 0) | (block >= n_vocab)][0])
            cause = (f"are its ids {ids.dtype}, of this vocabulary?" if os.fspath(path).endswith(".bin")
                     else "was it encoded with another vocabulary?")
            raise DatasetError(f"{where or path} holds token id {bad}, outside 0..{n_vocab - 1}; {cause}")


# ---------------------------------------------------------------------------------------------------
# Files that change while they are mapped.


def mapped_files(arrays):
    """{path: (device, inode, size, mtime)} of the files the memory-mapped arrays among `arrays` map."""
    files = {}
    for array in arrays:
        if isinstance(array, np.memmap) and array.filename not in files:
            files[array.filename] = _identity(array.filename)
    return files


def _identity(path):
    try:
        s = os.stat(path)
    except OSError:
        return None
    return s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns


def changed_file(files):
    """The first of `files` ({path: identity}, from `mapped_files`) that was replaced, rewritten, shortened
    or removed since, as a sentence; None when none was."""
    for path, identity in files.items():
        now = _identity(path)
        if now == identity:
            continue
        if now is None:
            return f"{path} was removed while in use"
        if now[:2] != identity[:2]:
            return f"{path} was replaced by another file while in use"
        return f"{path} was changed while in use (its size or time changed)"
    return None


# ---------------------------------------------------------------------------------------------------
# Writing.


class NpzWriter:
    """Writes token arrays arr_0, arr_1, ... to an open binary file as `np.savez` lays them out, one array
    at a time, each given as blocks of tokens: memory holds a block, never the file.

    compress: deflate the members (the smallest file), or store them (memory-mappable by `read_npz`).
    Zip timestamps are fixed, so the same tokens give the same bytes.
    """

    def __init__(self, file, dtype, compress=True):
        method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        self.archive = zipfile.ZipFile(file, "w", method, allowZip64=True)
        self.dtype = np.dtype(dtype)
        self.count = 0  # arrays written
        self.tokens = 0

    def add(self, blocks, length):
        """Append the next array: `length` tokens, given as an iterable of 1-D arrays."""
        info = zipfile.ZipInfo(f"arr_{self.count}.npy", date_time=(1980, 1, 1, 0, 0, 0))
        info.compress_type = self.archive.compression
        if info.compress_type == zipfile.ZIP_DEFLATED:
            info._compresslevel = ZIP_LEVEL  # compress_level from Python 3.13, which keeps this alias
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": (length,)}
        written = 0
        with self.archive.open(info, "w", force_zip64=True) as out:
            np.lib.format.write_array_header_1_0(out, header)
            for block in blocks:
                out.write(np.ascontiguousarray(block, self.dtype).data)
                written += len(block)
        if written != length:
            raise ValueError(f"arr_{self.count}: {written} tokens written, {length} announced")
        self.count += 1
        self.tokens += written

    def __enter__(self):
        return self

    def __exit__(self, kind, *exc):
        """Write the zip directory; after an error, only release the file (the caller deletes it)."""
        if kind is None:
            self.archive.close()
        else:
            with contextlib.suppress(Exception):
                self.archive.close()


class BinWriter:
    """Writes token arrays one after the other to an open binary file, as nanoGPT's .bin files hold them.
    The arrays' boundaries are not kept: with `separator` (an id), each array that does not end with it
    is followed by it, so that documents stay apart as nanoGPT's `<|endoftext|>` keeps them."""

    def __init__(self, file, dtype, separator=None):
        self.file = file
        self.dtype = np.dtype(dtype)
        self.separator = separator
        self.tokens = 0

    def add(self, blocks, length):
        last = None
        for block in blocks:
            self.file.write(np.ascontiguousarray(block, self.dtype).data)
            self.tokens += len(block)
            last = block[-1] if len(block) else last
        if self.separator is not None and last is not None and last != self.separator:
            self.file.write(np.array([self.separator], self.dtype).data)
            self.tokens += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def save_tokens(path, arrays, dtype=np.uint16, compress=True):
    """Write token arrays to an .npz file as `np.savez_compressed(path, *arrays)` does (`np.savez` with
    compress False), or to a .bin file one after the other, as `dtype`, atomically: an error never leaves
    a partial file. Returns the path written (see `output_name`)."""
    path = check_output_path(path)
    try:
        with atomic_write(path) as f, token_writer(f, path, dtype, compress) as writer:
            for array in arrays:
                array = np.asarray(array)
                if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
                    raise DatasetError(f"cannot write {path}: not a 1-D array of token ids (dtype "
                                       f"{array.dtype}, shape {array.shape})")
                writer.add(blocks_of(array), len(array))
    except (BrokenPipeError, WriteError):
        raise
    except OSError as e:
        raise WriteError(e.errno, f"cannot write {path}: {e.strerror}") from None
    return path


def output_name(path):
    """The file a dataset is written to: `path` if it ends with .npz or .bin (or is `-`, standard output,
    written as .npz), else `path` with `.npz` appended (as numpy does)."""
    path = os.fspath(path)
    return path if is_token_file(path) or path == "-" else path + ".npz"


def check_output_path(path):
    """`output_name(path)`, checked: a missing folder, or a folder at that name, is a DatasetError."""
    path = output_name(path)
    problem = write_problem(path)
    if problem:
        raise DatasetError(problem)
    return path


def token_writer(file, path, dtype, compress=True, separator=None):
    """The writer for `path`'s format: a BinWriter (with `separator`) for a .bin file, else an NpzWriter."""
    return BinWriter(file, dtype, separator) if path.endswith(".bin") else NpzWriter(file, dtype, compress)


def blocks_of(array):
    """An array as blocks of at most BLOCK_TOKENS tokens (views: a memory-mapped array stays on disk)."""
    return (array[start:start + BLOCK_TOKENS] for start in range(0, len(array), BLOCK_TOKENS))


class Spool:
    """The tokens of the array being built, kept in memory up to SPOOL_BYTES and past that in a temporary
    file (unnamed, in `folder`), until the array is complete and written."""

    def __init__(self, dtype, folder):
        self.dtype = np.dtype(dtype)
        self.file = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES, dir=folder)
        self.length = 0

    def add(self, tokens):
        self.file.write(np.ascontiguousarray(tokens, self.dtype).data)
        self.length += len(tokens)

    def blocks(self):
        """The tokens added so far, a block at a time."""
        self.file.seek(0)
        while True:
            data = self.file.read(BLOCK_TOKENS * self.dtype.itemsize)
            if not data:
                return
            yield np.frombuffer(data, self.dtype)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()

    def clear(self):
        self.file.seek(0)
        self.file.truncate()
        self.length = 0
