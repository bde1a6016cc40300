"""Read and write GPT-2 weights in the original TF1 name-based checkpoint format.

A checkpoint is a prefix such as `models/124M/model.ckpt`: the files `<prefix>.index` and
`<prefix>.data-00000-of-00001` hold tensors by TF1 variable name (`model/wte`, `model/h0/ln_1/g`, ...).
A folder's `checkpoint` state file names its newest prefix. OpenAI's released models, the nshepperd
trainer, and this package all use this format, so each can read the others' files.
"""

import contextlib
import os
import re
import tempfile

import numpy as np
import tensorflow as tf

from gpt2_tf.checkpoint_files import (
    CheckpointError,
    CheckpointMismatch,
    check_intact,
    latest_prefix,
    update_state_file,
)
from gpt2_tf.files import atomic_write
from gpt2_tf.hparams import load_hparams
from gpt2_tf.model import GPT2, weights_to_be_loaded


def latest(path):
    """The newest checkpoint prefix in a folder (from its `checkpoint` state file), or path itself.

    A prefix is accepted as is when `<prefix>.index` exists. Raises CheckpointError otherwise.
    """
    try:
        return latest_prefix(path)
    except ValueError as e:
        raise CheckpointError(str(e)) from None


def read(path):
    """All tensors of a checkpoint (folder or prefix), as {name: numpy array}."""
    prefix = latest(path)
    check_intact(prefix)
    reader = tf.train.load_checkpoint(prefix)
    with readable(prefix):
        return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def restore(model, path):
    """Load every weight of `model` from a checkpoint (folder or prefix), by TF1 name.

    Every tensor must be there with the original's shape (the Conv1D weights [1, nx, nf], which the
    model keeps as [nx, nf]), and the checkpoint must hold nothing else; otherwise one CheckpointError
    says how the two differ and the model is left unchanged. A damaged checkpoint (cut short, or
    failing TensorFlow's checksums) is a CheckpointError too. Returns the prefix that was read.
    """
    prefix = latest(path)
    check_intact(prefix)
    reader = tf.train.load_checkpoint(prefix)
    stored = reader.get_variable_to_shape_map()
    wanted = model.variables_by_name()
    shapes = model.hparams.variable_shapes()
    problems = []
    missing = sorted(set(wanted) - set(stored))
    unexpected = sorted(set(stored) - set(wanted))
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected)}")
    for name in sorted(set(wanted) & set(stored)):
        want = shapes[name]
        if list(stored[name]) != want:
            problems.append(f"{name} has shape {list(stored[name])}, the model needs {want}")
    if problems:
        shape, hp = stored_shape(stored), model.hparams
        wanted = model_shape(hp.n_layer, hp.n_embd, hp.n_ctx, hp.n_vocab)
        if shape and shape != wanted:
            raise CheckpointMismatch(f"checkpoint {prefix} does not fit the model: the checkpoint is "
                                     f"{shape}, the model {wanted}")
        more = f" (and {len(problems) - 3} more differences)" if len(problems) > 3 else ""
        raise CheckpointMismatch(f"checkpoint {prefix} does not fit the model: " + "; ".join(problems[:3])
                                 + more)
    with readable(prefix):
        assign(model, lambda name: read_tensor(prefix, name))  # a tensor at a time, straight into TensorFlow
    return prefix


def model_shape(n_layer, n_embd, n_ctx, n_vocab):
    """A model's shape in a few words: "2 layers x 64, n_ctx 128, n_vocab 50257"."""
    return f"{n_layer} layers x {n_embd}, n_ctx {n_ctx}, n_vocab {n_vocab}"


def stored_shape(shapes):
    """`model_shape` of a checkpoint's {name: shape}, or None when it is not a GPT-2 checkpoint."""
    if len(shapes.get("model/wte", ())) != 2 or len(shapes.get("model/wpe", ())) != 2:
        return None
    layers = {name.split("/")[1] for name in shapes if re.match(r"model/h\d+/", name)}
    (n_vocab, n_embd), (n_ctx, _) = shapes["model/wte"], shapes["model/wpe"]
    return model_shape(len(layers), n_embd, n_ctx, n_vocab)


@contextlib.contextmanager
def readable(prefix):
    """TensorFlow's errors while reading checkpoint `prefix` (a failed checksum, a short read) as one
    CheckpointError line."""
    try:
        yield
    except tf.errors.OpError as e:
        reason = e.message.strip().splitlines()[0] if e.message.strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {prefix} is damaged: {reason}") from None


def assign(model, tensor):
    """Set each weight of `model` to tensor(TF1 name), a tensor in the original's shape (reshaped and
    cast to the weight's)."""
    for name, variable in model.variables_by_name().items():
        variable.assign(tf.cast(tf.reshape(tensor(name), variable.shape), variable.dtype))


def read_tensor(prefix, name, dtype=tf.float32):
    """One tensor of a checkpoint, read as a TensorFlow tensor (no NumPy copy on the way)."""
    return tf.raw_ops.RestoreV2(prefix=prefix, tensor_names=[name], shape_and_slices=[""], dtypes=[dtype])[0]


def nonfinite(model):
    """None when the model's weights are all finite; else which are not, as "<name> [and N more
    tensors] hold values that are not finite (NaN or infinity)"."""
    damaged = [name for name, variable in model.variables_by_name().items()
               if not bool(tf.reduce_all(tf.math.is_finite(variable)))]
    if not damaged:
        return None
    more = f" and {len(damaged) - 1} more tensors" if len(damaged) > 1 else ""
    return f"{damaged[0]}{more} hold values that are not finite (NaN or infinity)"


def weight_tensors(model, prefix):
    """{TF1 name: tensor} of the weights to save at `prefix`: their own values in the original's shapes
    (reshaped, not copied, so that saving needs no second copy of the model).

    Weights that are not all finite are refused with a CheckpointError: they are never saved, so that a
    run's newest checkpoint is always one it can go on from.
    """
    problem = nonfinite(model)
    if problem:
        raise CheckpointError(f"not saving {prefix}: {problem}")
    shapes = model.hparams.variable_shapes()
    return {name: tf.reshape(tf.cast(v, tf.float32), shapes[name])
            for name, v in model.variables_by_name().items()}


def save(model, prefix, state_file=True, max_to_keep=None):
    """Write the model's weights to `<prefix>.index` / `<prefix>.data-00000-of-00001`, atomically,
    by TF1 name and in the original's shapes.

    The tensors are written under a temporary prefix in the same folder and renamed into place, data
    file first, so a reader sees either the old checkpoint or the complete new one. With
    `state_file`, the folder's `checkpoint` file is then updated to name this prefix (relative
    paths, as in the released models), keeping the `max_to_keep` newest entries (None: all).
    Weights that are not all finite are refused (CheckpointError) and nothing is written.
    Returns the prefix.
    """
    return save_tensors(weight_tensors(model, prefix), prefix, state_file=state_file, max_to_keep=max_to_keep)


def save_tensors(tensors, prefix, state_file=True, max_to_keep=None):
    """`save` for a dict {TF1 name: array or tensor}; see `save`. TensorFlow writes the tensors one
    after the other, from where they are: the only memory used is theirs (`as_tensor`)."""
    folder = os.path.dirname(os.path.abspath(prefix))
    os.makedirs(folder, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=folder)
    try:
        tmp_prefix = os.path.join(tmp, "ckpt")
        names = sorted(tensors)
        tf.raw_ops.SaveV2(prefix=tmp_prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                          tensors=[as_tensor(tensors[n]) for n in names])
        for suffix in (".data-00000-of-00001", ".index"):
            os.replace(tmp_prefix + suffix, prefix + suffix)
    finally:
        for name in os.listdir(tmp):
            os.remove(os.path.join(tmp, name))
        os.rmdir(tmp)
    if state_file:
        removed = update_state_file(folder, os.path.basename(prefix), max_to_keep)
        for old in removed:
            for suffix in (".index", ".data-00000-of-00001", ".meta"):
                if os.path.exists(os.path.join(folder, old + suffix)):
                    os.remove(os.path.join(folder, old + suffix))
    return prefix


def save_meta_graph(prefix, hparams):
    """Write `<prefix>.meta`, the TF1 graph of the released models' files: the model's variables and a
    Saver for them, so that `tf.compat.v1.train.import_meta_graph` and `Saver.restore` read the
    checkpoint in TF1 code without building the model."""
    graph = tf.Graph()
    with graph.as_default():
        variables = [tf.compat.v1.get_variable(name, shape, initializer=tf.compat.v1.zeros_initializer(),
                                               use_resource=False)
                     for name, shape in hparams.variable_shapes().items()]
        saver = tf.compat.v1.train.Saver(variables)
        with atomic_write(prefix + ".meta") as f:
            f.write(saver.export_meta_graph(clear_devices=True).SerializeToString())


def as_tensor(value):
    """A tensor of `value`: a NumPy array that is writable and C-contiguous (a copy-on-write memory map
    included) is shared through DLPack instead of copied (converting copies it, and holds twice its
    size while it does); anything else is converted."""
    if isinstance(value, np.ndarray) and value.flags.writeable and value.flags.c_contiguous and value.size:
        return tf.experimental.dlpack.from_dlpack(value.__dlpack__())
    return tf.convert_to_tensor(value)


def model_from_weights(hparams, weights, **model_kwargs):
    """Build a GPT2 with the given weights {TF1 name: array in the original's shape}."""
    with weights_to_be_loaded():
        model = GPT2(hparams, **model_kwargs)
    assign(model, lambda name: as_tensor(weights[name]))
    return model


def load_model(path, hparams=None, **model_kwargs):
    """Build a GPT2 and load its weights from a model folder, a training run folder, or a prefix.

    Unless given, hparams.json is read from the folder (or, for a prefix, from the prefix's folder).
    Extra arguments go to GPT2 (e.g. dtype="bfloat16"). Returns (model, hparams).
    """
    if hparams is None:
        folder = path if os.path.isdir(path) else os.path.dirname(path) or "."
        if not os.path.exists(os.path.join(folder, "hparams.json")):
            raise CheckpointError(f"{folder} has no hparams.json")
        hparams = load_hparams(folder)
    with weights_to_be_loaded():
        model = GPT2(hparams, **model_kwargs)
    restore(model, path)
    return model, hparams
