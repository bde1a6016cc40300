"""Training checkpoints: `checkpoint/<run>/model-N` plus what it takes to resume exactly.

A run folder holds, as the nshepperd trainer's did:

    checkpoint              the TF state file naming the newest checkpoints
    counter                 the step of the newest checkpoint, as text
    model-N.index           the weights after N updates, by TF1 name (readable by every GPT-2 tool)
    model-N.data-00000-of-00001
    events.out.tfevents.*   TensorBoard scalars

and also, so that the folder is self-contained and a run resumes exactly where it stopped:

    hparams.json, encoder.json, vocab.bpe
    model-N.train/state.json        step, random states of the data sampler and the noise, loss average
    model-N.train/optimizer.index   the optimizer's state (Adam moments and iteration, ...)
    model-N.train/optimizer.data-00000-of-00001

Saving is atomic against a crash or kill at any moment. The files of model-N are written in this
order: the `.train` folder (built under a temporary name, then renamed), the weights' data file, the
weights' index, and only then the `checkpoint` state file and `counter`. A checkpoint exists for
readers once its `.index` does, and by then everything else of it is complete; the state file only
ever names complete checkpoints.
"""

import collections.abc
import json
import os
import shutil
import time

import numpy as np
import tensorflow as tf

from gpt2_tf import checkpoint, checkpoint_files, lora
from gpt2_tf.checkpoint_files import TRAIN_SUFFIX, read_train_state
from gpt2_tf.files import atomic_write
from gpt2_tf.optim import describe_state, load_optimizer_state, optimizer_state, state_mismatch

WEIGHT_SUFFIXES = (".index", ".data-00000-of-00001", ".meta")
FORMAT = 1


def rng_state_to_json(rng):
    """A numpy RandomState's state as a JSON-friendly list."""
    kind, keys, pos, has_gauss, cached = rng.get_state()
    return [kind, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)]


def rng_state_from_json(values):
    """The inverse of rng_state_to_json: a tuple for RandomState.set_state."""
    kind, keys, pos, has_gauss, cached = values
    return kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached


def read_counter(folder):
    """The integer in `folder/counter`, or None when there is no such file."""
    path = os.path.join(folder, "counter")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return int(f.read().strip())


def write_text(path, text):
    """Write a small text file atomically (temporary file, then rename)."""
    with atomic_write(path, encoding="utf-8") as f:
        f.write(text)


def copy_file(source, target):
    """Copy a file atomically, unless the target exists already."""
    if os.path.exists(target):
        return
    with atomic_write(target) as f, open(source, "rb") as s:
        shutil.copyfileobj(s, f)


def forget_checkpoint(folder, name):
    """Remove `name` from the folder's `checkpoint` state file (atomically), keeping the others."""
    names = checkpoint_files.read_state_file(folder)
    if name in names:
        checkpoint_files.write_state_file(folder, [n for n in names if n != name])


def delete_checkpoint(folder, name):
    """Delete the files of checkpoint `name`: the index first, so that it stops existing at once."""
    prefix = os.path.join(folder, name)
    for suffix in WEIGHT_SUFFIXES:
        if os.path.exists(prefix + suffix):
            os.remove(prefix + suffix)
    if os.path.isdir(prefix + TRAIN_SUFFIX):
        shutil.rmtree(prefix + TRAIN_SUFFIX)


def load_train_state(prefix):
    """The training state saved beside checkpoint `prefix`: (state dict, optimizer arrays) or None.

    None when the checkpoint has no `.train` folder (a released model, or one written by the original
    trainer). The state dict has "step", "sampler_rng", "noise_rng", "avg_loss", "optimizer",
    "optimizer_variables" ([path, shape] pairs), "trained_variables", "seed" and "time".
    """
    state = read_train_state(prefix)
    if state is None:
        return None
    folder = prefix + TRAIN_SUFFIX
    arrays = []
    if state["optimizer_variables"]:
        arrays = StoredArrays(os.path.join(folder, "optimizer"), len(state["optimizer_variables"]))
    return state, arrays


class StoredArrays(collections.abc.Sequence):
    """The arrays optimizer/0 ... optimizer/<n-1> of a checkpoint, each read from disk when it is asked
    for: restoring the optimizer holds one of them in memory at a time, not a copy of its state."""

    def __init__(self, prefix, n):
        self.prefix = prefix
        self.dtypes = tf.train.load_checkpoint(prefix).get_variable_to_dtype_map()
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        name = f"optimizer/{i}"
        return checkpoint.read_tensor(self.prefix, name, self.dtypes[name])


def restore_optimizer(optimizer, name, state, arrays):
    """Load saved optimizer arrays if they fit this optimizer (`name`, as in --optimizer).

    They fit when they were saved by the same kind of optimizer with the same tensor shapes (but for
    axes of size 1) in the same order (variable paths are not compared: Keras numbers them per
    process). Returns None, or the reason they do not fit.
    """
    saved = [shape for _, shape in state["optimizer_variables"]]
    if state["optimizer"] != name or state_mismatch(optimizer, saved):
        return (f"it was saved by {state['optimizer']} with {len(saved)} tensors; {name} here has "
                f"{len(describe_state(optimizer))} (another optimizer, precision or set of trained "
                f"variables)")
    load_optimizer_state(optimizer, arrays)
    return None


class RunCheckpoints:
    """Writes the checkpoints of one run folder and prunes old ones.

    Keeps the `max_to_keep` newest checkpoints (None: all), and, as TF's Saver with
    keep_checkpoint_every_n_hours, never deletes a checkpoint written at least `keep_every_hours`
    after the last one kept that way (they drop out of the state file but stay on disk).
    `aux_files` {name: source path} are copied into the folder once (hparams.json and the tokenizer).
    With `new_count` (a run restarted with --restore_from fresh), the first save lists only itself in
    the state file: the checkpoints of the earlier count are no longer listed (their files stay until
    a save of the same name replaces them).
    """

    def __init__(self, folder, max_to_keep=5, keep_every_hours=2.0, aux_files=None, new_count=False):
        self.folder = folder
        self.max_to_keep = max_to_keep
        self.keep_every = keep_every_hours * 3600 if keep_every_hours else None
        self.next_keep_time = time.time() + self.keep_every if self.keep_every else None
        self.aux_files = aux_files or {}
        self.new_count = new_count

    def save(self, step, model, optimizer, state, adapter=None):
        """Write model-<step> with its training state; returns the prefix. With `adapter` (a LoRA run's
        factors, {TF1 name: variable}), the checkpoint holds them alone.

        `state` is a JSON-friendly dict (step, random states, ...) stored as model-<step>.train/state.json.
        When any write fails (a full disk), the files of model-<step> written so far are removed and the
        state file still names the run's newest complete checkpoint; the error is raised.
        """
        name = f"model-{step}"
        prefix = os.path.join(self.folder, name)
        # Refused (not finite) before an older model-<step> is removed.
        weights = (lora.adapter_arrays(adapter, prefix) if adapter is not None
                   else checkpoint.weight_tensors(model, prefix))
        os.makedirs(self.folder, exist_ok=True)
        # A checkpoint of the same name from an earlier count is about to be replaced: unlist it and
        # delete it first, so that no reader can see a mix of its files and the new ones.
        forget_checkpoint(self.folder, name)
        delete_checkpoint(self.folder, name)
        try:
            self._write_train_folder(prefix, step, optimizer, state)
            checkpoint.save_tensors(weights, prefix, state_file=False)
            for target, source in self.aux_files.items():
                copy_file(source, os.path.join(self.folder, target))
            dropped = checkpoint_files.update_state_file(self.folder, name, self.max_to_keep,
                                                   earlier=not self.new_count)
        except BaseException:
            delete_checkpoint(self.folder, name)  # not listed: the newest listed checkpoint stays the newest
            raise
        self.new_count = False
        for old in dropped:
            if not self._keep_forever(old):
                delete_checkpoint(self.folder, old)
        write_text(os.path.join(self.folder, "counter"), f"{step}\n")
        return prefix

    def _write_train_folder(self, prefix, step, optimizer, state):
        tmp = os.path.join(self.folder, f".tmp-{os.path.basename(prefix)}{TRAIN_SUFFIX}")
        shutil.rmtree(tmp, ignore_errors=True)  # left by a save that was killed
        os.mkdir(tmp)
        try:
            arrays = optimizer_state(optimizer)
            if arrays:
                names = [f"optimizer/{i}" for i in range(len(arrays))]
                tf.raw_ops.SaveV2(prefix=os.path.join(tmp, "optimizer"), tensor_names=names,
                                  shape_and_slices=[""] * len(names), tensors=[a for _, a in arrays])
            full = dict(state, format=FORMAT, step=step, time=time.time(),
                        optimizer_variables=describe_state(optimizer))
            with open(os.path.join(tmp, "state.json"), "w", encoding="utf-8") as f:
                json.dump(full, f)
            os.rename(tmp, prefix + TRAIN_SUFFIX)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _keep_forever(self, name):
        """Whether a checkpoint dropped from the list is old enough apart to be kept on disk."""
        if self.keep_every is None:
            return False
        state_path = os.path.join(self.folder, name + TRAIN_SUFFIX, "state.json")
        if os.path.exists(state_path):
            with open(state_path, encoding="utf-8") as f:
                written = json.load(f).get("time", 0)
        elif os.path.exists(os.path.join(self.folder, name + ".index")):
            written = os.path.getmtime(os.path.join(self.folder, name + ".index"))
        else:
            return False
        if written >= self.next_keep_time:
            self.next_keep_time += self.keep_every
            return True
        return False
