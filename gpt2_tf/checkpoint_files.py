"""Read a TensorFlow checkpoint without TensorFlow: its index, its folder's `checkpoint` state file, and
its tensors, memory-mapped.

A checkpoint is a "tensor bundle": the tensors' bytes are in `<prefix>.data-NNNNN-of-NNNNN` and the index
`<prefix>.index` says where each tensor is. The index is a LevelDB-style sorted table:

* the last 48 bytes are a footer: two block handles (metaindex, index), each a pair of varints
  (offset, size), zero padding, and an 8-byte magic number;
* the index block maps a separator key to the handle of each data block;
* a block is a run of entries followed by an array of 32-bit restart offsets and their count; an entry
  is three varints (bytes shared with the previous key, bytes of new key, value length), the new key
  bytes and the value. Every block is followed by a 5-byte trailer: a compression byte and a checksum.
  TensorFlow writes bundles without compression.

The value of each key is a serialized `BundleEntryProto` (dtype = 1, shape = 2, shard_id = 3,
offset = 4, size = 5, crc32c = 6); the empty key holds the `BundleHeaderProto` and is skipped.
"""

import json
import os
import struct

import numpy as np

from gpt2_tf.files import atomic_write


class CheckpointError(ValueError):
    """A checkpoint that cannot be found, is damaged, or does not fit the model."""


class CheckpointMismatch(CheckpointError):
    """A checkpoint whose tensors are not those of the model it is loaded into (another shape)."""


class Unsupported(ValueError):
    """An index this reader does not handle (several shards, compressed blocks); TensorFlow may."""


TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48

DT_FLOAT = 1  # TensorFlow's DataType number of float32
DATA_SUFFIX = ".data-00000-of-00001"
TRAIN_SUFFIX = ".train"  # the folder beside a training checkpoint that holds what resuming needs


def _varint(data, pos):
    """Decode a base-128 varint at `pos`; returns (value, next position)."""
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated or malformed varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def _proto_fields(data):
    """Decode a protobuf message into {field number: [values]} (varints as ints, the rest as bytes)."""
    fields = {}
    pos = 0
    while pos < len(data):
        tag, pos = _varint(data, pos)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == 0:
            value, pos = _varint(data, pos)
        elif wire_type == 1:
            value, pos = data[pos:pos + 8], pos + 8
        elif wire_type == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos:pos + length], pos + length
        elif wire_type == 5:
            value, pos = data[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")
        if pos > len(data):
            raise ValueError("truncated protobuf message")
        fields.setdefault(number, []).append(value)
    return fields


def _read_block(data, handle):
    """The contents of the block at `handle` = (offset, size), checking its trailer."""
    offset, size = handle
    if offset + size + 5 > len(data):
        raise ValueError("block extends past the end of the file")
    if data[offset + size] != 0:
        raise Unsupported("compressed blocks are not supported")
    return data[offset:offset + size]


def _block_entries(block):
    """Yield the (key, value) pairs of a block, undoing the key prefix compression."""
    if len(block) < 4:
        raise ValueError("block too short")
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    end = len(block) - 4 * (num_restarts + 1)
    if end < 0:
        raise ValueError("bad restart array")
    key = b""
    pos = 0
    while pos < end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        value_length, pos = _varint(block, pos)
        if shared > len(key) or pos + unshared + value_length > end:
            raise ValueError("corrupt block entry")
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        yield key, block[pos:pos + value_length]
        pos += value_length


def _bundle_entry(value):
    """(dtype, shape, shard_id, offset, size) from a serialized BundleEntryProto."""
    fields = _proto_fields(value)
    if 7 in fields:
        raise Unsupported("sliced (partitioned) tensors are not supported")
    shape_fields = _proto_fields(fields.get(2, [b""])[-1])
    if 3 in shape_fields and shape_fields[3][-1]:
        raise ValueError("tensor of unknown rank")
    shape = [_proto_fields(dim).get(1, [0])[-1] for dim in shape_fields.get(2, [])]
    # int64 fields are encoded as two's complement varints; a negative size means an invalid entry.
    if any(size >= 1 << 63 for size in shape):
        raise ValueError("negative dimension")

    def scalar(number):
        return fields.get(number, [0])[-1]

    return scalar(1), shape, scalar(3), scalar(4), scalar(5)


def read_bundle_index(path):
    """Read a checkpoint index file.

    Returns {tensor name: (dtype enum, shape list, offset, size)}, where dtype is TensorFlow's DataType
    number (1 = float32) and offset/size locate the tensor's bytes in the data file. Raises ValueError
    if the file is not a readable, single-shard bundle index.
    """
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < FOOTER_SIZE:
        raise ValueError(f"{path}: too short to be a checkpoint index")
    footer = data[-FOOTER_SIZE:]
    if struct.unpack("<Q", footer[-8:])[0] != TABLE_MAGIC:
        raise ValueError(f"{path}: not a checkpoint index (bad magic number)")
    try:
        pos = 0
        handles = []
        for _ in range(4):
            value, pos = _varint(footer, pos)
            handles.append(value)
        index_handle = handles[2], handles[3]
        tensors = {}
        for _, block_handle in _block_entries(_read_block(data, index_handle)):
            offset, pos = _varint(block_handle, 0)
            size, _ = _varint(block_handle, pos)
            for key, value in _block_entries(_read_block(data, (offset, size))):
                if not key:
                    continue  # the BundleHeaderProto
                dtype, shape, shard_id, offset_in_data, size_in_data = _bundle_entry(value)
                if shard_id != 0:
                    raise Unsupported("multi-shard checkpoints are not supported")
                tensors[key.decode("utf-8")] = (dtype, shape, offset_in_data, size_in_data)
    except Unsupported as e:
        raise Unsupported(f"{path}: {e}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: corrupt checkpoint index ({e})") from None
    return tensors


def read_state_file(folder):
    """The checkpoint names listed in `folder/checkpoint`, oldest first (the newest is last)."""
    path = os.path.join(folder, "checkpoint")
    if not os.path.exists(path):
        return []
    names = []
    newest = None
    with open(path, encoding="utf-8") as f:
        for line in f:
            key, _, value = line.partition(":")
            value = value.strip().strip('"')
            if key.strip() == "all_model_checkpoint_paths":
                names.append(value)
            elif key.strip() == "model_checkpoint_path":
                newest = value
    if newest is not None:
        names = [n for n in names if n != newest] + [newest]
    return names


def update_state_file(folder, name, max_to_keep=None, earlier=True):
    """Make `name` the newest entry of `folder/checkpoint`, atomically; returns the names dropped.
    Without `earlier`, it becomes the only entry (the others are dropped from the list, not returned)."""
    names = [n for n in read_state_file(folder) if n != name and earlier] + [name]
    dropped = []
    if max_to_keep is not None and len(names) > max_to_keep:
        dropped, names = names[:-max_to_keep], names[-max_to_keep:]
    write_state_file(folder, names)
    return [n for n in dropped if os.path.basename(n) == n]


def write_state_file(folder, names):
    """Write `folder/checkpoint` listing `names` (oldest first; the last is the newest), atomically, in
    TensorFlow's text format; with no names, the file is removed."""
    path = os.path.join(folder, "checkpoint")
    if not names:
        if os.path.exists(path):
            os.remove(path)
        return
    text = f'model_checkpoint_path: "{names[-1]}"\n'
    text += "".join(f'all_model_checkpoint_paths: "{n}"\n' for n in names)
    with atomic_write(path, encoding="utf-8") as f:
        f.write(text)


def latest_prefix(path):
    """The newest checkpoint prefix in a folder (the last one its `checkpoint` state file names), or
    path itself when `<path>.index` exists. Raises ValueError naming what is missing otherwise."""
    if os.path.isdir(path):
        names = read_state_file(path)
        if not names:
            raise ValueError(f"no checkpoint in {path}: it has no valid 'checkpoint' state file")
        prefix = os.path.join(path, names[-1])
        if not os.path.exists(prefix + ".index"):
            raise ValueError(f"{path}/checkpoint names {prefix}, but {prefix}.index does not exist")
        return prefix
    if os.path.exists(path + ".index"):
        return path
    raise ValueError(f"no checkpoint at {path}: expected a folder with a 'checkpoint' file or a prefix "
                     f"with {os.path.basename(path)}.index")


def damage(prefix):
    """Why checkpoint `prefix` cannot be read whole (None when its files are complete): an index that
    is not one, a data file that is missing or shorter than the index says (a copy or download cut
    short). Layouts this reader does not handle are left to TensorFlow (None). Reads only the index."""
    try:
        entries = read_bundle_index(prefix + ".index")
    except Unsupported:
        return None
    except OSError as e:
        return f"cannot read {prefix}.index: {e.strerror}"
    except ValueError as e:
        return str(e)
    data_path = prefix + DATA_SUFFIX
    if not entries:
        return None
    if not os.path.exists(data_path):
        return f"{data_path} is missing"
    size = os.path.getsize(data_path)
    for name, (_, _, offset, nbytes) in sorted(entries.items(), key=lambda item: item[1][2]):
        if offset + nbytes > size:
            return f"{data_path}: tensor {name} does not fit the file (truncated?)"
    return None


def check_intact(prefix):
    """Raise CheckpointError when checkpoint `prefix` is damaged (`damage`), naming the newest intact
    checkpoint of its folder, when there is one, to use instead."""
    problem = damage(prefix)
    if problem is None:
        return
    folder, name = os.path.split(prefix)
    older = [n for n in read_state_file(folder or ".") if n != name]
    intact = next((os.path.join(folder, n) for n in reversed(older)
                   if os.path.exists(os.path.join(folder, n) + ".index") and damage(os.path.join(folder, n))
                   is None), None)
    hint = f"; the newest intact checkpoint of {folder} is {intact}" if intact else ""
    raise CheckpointError(f"checkpoint {prefix} is damaged: {problem}{hint}")


def read_bundle(prefix, names):
    """Tensors `names` of a single-shard checkpoint, as float32 arrays memory-mapped from its data file:
    {name: array}. Nothing is read until an array is used, so a checkpoint of any size opens at once;
    other tensors in it (an optimizer's, a step counter) are left alone. The mapping is copy-on-write:
    writing into an array changes memory, never the file. Raises ValueError for a name that is missing,
    not float32, or outside the data file."""
    entries = read_bundle_index(prefix + ".index")
    data_path = prefix + DATA_SUFFIX
    size = os.path.getsize(data_path)
    data = np.memmap(data_path, dtype=np.uint8, mode="c") if size else np.zeros(0, np.uint8)
    tensors = {}
    for name in names:
        if name not in entries:
            raise ValueError(f"checkpoint {prefix} has no tensor {name}")
        dtype, shape, offset, nbytes = entries[name]
        if dtype != DT_FLOAT:
            raise ValueError(f"checkpoint {prefix}: tensor {name} has TensorFlow dtype {dtype}, not float32")
        if nbytes != 4 * int(np.prod(shape)) or offset + nbytes > size:
            raise ValueError(f"{data_path}: tensor {name} does not fit the file (truncated?)")
        tensors[name] = data[offset:offset + nbytes].view(np.float32).reshape(shape)
    return tensors


def read_train_state(prefix):
    """The state.json that train.py keeps beside checkpoint `prefix` (in `<prefix>.train/`), as a dict,
    or None when there is none (a released model, a checkpoint of the original trainer). Raises
    CheckpointError when it is there but cannot be read."""
    path = os.path.join(prefix + TRAIN_SUFFIX, "state.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {prefix} is damaged: {path} cannot be read ({e})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise CheckpointError(f"checkpoint {prefix} is damaged: {path} is not a training state")
    return state
