"""Read and write safetensors files, the weights format of the Hugging Face Hub, with NumPy alone.

A file is an 8-byte little-endian header length N, a JSON header of N bytes, then the tensors' bytes:

    {"__metadata__": {"format": "pt"},
     "h.0.ln_1.weight": {"dtype": "F32", "shape": [768], "data_offsets": [0, 3072]}, ...}

Offsets count from the first byte after the header; data is little-endian and C-ordered. Reading
memory-maps the file, so a tensor costs no memory of the process's own. Writing streams one tensor after the
other from where it is, so it needs no second copy of the weights. A model too big for one file is split
into shards named by `model.safetensors.index.json` ({"weight_map": {tensor name: file name}}).

This module does not import TensorFlow (nor PyTorch, nor the `safetensors` package).
"""

import json
import os
import struct

import numpy as np

from gpt2_tf.files import atomic_write

# safetensors dtype -> NumPy dtype of the stored bytes. bfloat16 has no NumPy dtype: its bits are read as
# uint16 (see `to_float32`).
DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?",
}
FLOATS = ("F64", "F32", "F16", "BF16")
MAX_HEADER = 100 << 20  # the format's own limit on the header's size
INDEX_FILE = "model.safetensors.index.json"


class SafetensorsError(ValueError):
    """A safetensors file that cannot be read."""


def read(path):
    """The tensors of one safetensors file: (metadata dict, {name: (dtype name, array)}), where each
    array is a memory-mapped view of the stored bytes (bfloat16 as uint16 bits). The mapping is
    copy-on-write: writing into an array changes memory, never the file."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        start = f.read(8)
        if len(start) < 8:
            raise SafetensorsError(f"{path} is too short to be a safetensors file")
        (length,) = struct.unpack("<Q", start)
        if length > min(MAX_HEADER, size - 8):
            raise SafetensorsError(f"{path} is not a safetensors file (its header length {length} is "
                                   f"impossible for a file of {size} bytes)")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SafetensorsError(f"{path} is not a safetensors file (its header is not JSON: "
                                   f"{e})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path} is not a safetensors file (its header is not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    begin = 8 + length
    data = np.memmap(path, dtype=np.uint8, mode="c") if size > begin else np.zeros(begin, np.uint8)
    tensors = {}
    for name, entry in header.items():
        try:
            dtype, (first, last) = entry["dtype"], entry["data_offsets"]
            shape = [int(n) for n in entry["shape"]]
        except (KeyError, TypeError, ValueError):
            raise SafetensorsError(f"{path}: the header's entry for {name} is malformed") from None
        if dtype not in DTYPES:
            raise SafetensorsError(f"{path}: tensor {name} has dtype {dtype}, which is not supported")
        itemsize = np.dtype(DTYPES[dtype]).itemsize
        if last - first != itemsize * int(np.prod(shape)) or first < 0 or begin + last > size:
            raise SafetensorsError(f"{path}: tensor {name} does not fit the file (truncated?)")
        tensors[name] = (dtype, data[begin + first:begin + last].view(DTYPES[dtype]).reshape(shape))
    return metadata, tensors


def read_folder(folder):
    """All tensors of a folder's `model.safetensors`, or of the shards its `model.safetensors.index.json`
    names: (metadata of the first file, {name: (dtype name, array)}). Raises FileNotFoundError when the
    folder has neither, SafetensorsError when a shard lacks a tensor the index promises."""
    index_path = os.path.join(folder, INDEX_FILE)
    single = os.path.join(folder, "model.safetensors")
    if os.path.exists(single):
        return read(single)
    if not os.path.exists(index_path):
        raise FileNotFoundError(f"{folder} has no model.safetensors and no {INDEX_FILE}")
    try:
        with open(index_path, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise SafetensorsError(f"{index_path} is not a safetensors index ({e})") from None
    metadata, tensors = None, {}
    for shard in sorted(set(weight_map.values())):
        shard_metadata, shard_tensors = read(os.path.join(folder, shard))
        metadata = shard_metadata if metadata is None else metadata
        tensors.update(shard_tensors)
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
        raise SafetensorsError(f"{index_path} names {missing[0]}, which its shard does not hold")
    return metadata or {}, tensors


def to_float32(dtype, array):
    """A stored floating-point tensor as float32: the same array for F32, a new one otherwise.
    bfloat16 and float16 widen exactly; float64 is rounded."""
    if dtype not in FLOATS:
        raise SafetensorsError(f"a {dtype} tensor is not floating point")
    if dtype == "BF16":
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array if dtype == "F32" else array.astype(np.float32)


def write(path, tensors, metadata=None, progress=None):
    """Write {name: float32 array} to a safetensors file, atomically, in the order given.

    Each tensor is written from where it is (a memory-mapped view costs no copy). `metadata` is a
    {str: str} dict (Hugging Face expects {"format": "pt"}); `progress(nbytes)` is called after each
    tensor.
    """
    header, offset = {}, 0
    for name, array in tensors.items():
        nbytes = array.size * 4
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if metadata:
        header = {"__metadata__": metadata, **header}
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # the tensors start 8-byte aligned
    with atomic_write(path) as f:
        f.write(struct.pack("<Q", len(encoded)) + encoded)
        for array in tensors.values():
            f.write(memoryview(np.ascontiguousarray(array, dtype="<f4")).cast("B"))
            if progress:
                progress(array.size * 4)
