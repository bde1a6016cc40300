"""Saving and restoring a run take no second copy of the weights or of the optimizer's state.

Measured in a fresh process as the growth of its peak resident memory (Linux: /proc/self/status,
the peak reset through /proc/self/clear_refs) while the work runs, on a model of about 100 MB of
weights made of many small tensors: a full copy would add at least the size of what is copied.
glibc is told to give every block of 128 KiB or more back to the system when it is freed, so that
memory freed by earlier work cannot hide an allocation.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBE = """
import json, os, sys
from gpt2_tf import checkpoint
from gpt2_tf.hparams import HParams
from gpt2_tf.optim import make_optimizer
from gpt2_tf.train_step import build_model, trained_variables
from gpt2_tf.run_checkpoints import RunCheckpoints, load_train_state, restore_optimizer


def memory():
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


def growth(work):
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak starts again from the present
    before, _ = memory()
    work()
    return memory()[1] - before


folder = sys.argv[1]
model = build_model(HParams(n_vocab=1024, n_ctx=64, n_embd=512, n_head=8, n_layer=8))
variables = trained_variables(model)
optimizer = make_optimizer("adam", 1e-3)
optimizer.build(list(variables.values()))
runs = RunCheckpoints(folder, max_to_keep=None)
prefix = runs.save(1, model, optimizer, {"optimizer": "adam"})  # the first time, buffers and files are set up


def restore_optimizer_state():
    state, arrays = load_train_state(prefix)
    assert restore_optimizer(optimizer, "adam", state, arrays) is None


restore_optimizer_state()  # its variables are now in memory, as after a first update
print(json.dumps({
    "weights": sum(v.numpy().nbytes for v in variables.values()),
    "state": sum(v.numpy().nbytes for v in optimizer.variables),
    "save": growth(lambda: runs.save(2, model, optimizer, {"optimizer": "adam"})),
    "restore_weights": growth(lambda: checkpoint.restore(model, prefix)),
    "restore_state": growth(restore_optimizer_state),
}))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="measured with Linux's /proc")
@pytest.mark.slow  # over 10 s: the default suite stays near 10 minutes
def test_save_and_restore_take_no_second_copy(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", MALLOC_MMAP_THRESHOLD_="131072")
    out = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path)], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    sizes = json.loads(out.stdout.strip().splitlines()[-1])
    weights, state = sizes["weights"], sizes["state"]
    assert weights > 100e6 and state > 2 * weights * 0.99
    # Writing the weights and Adam's moments (3 x the weights) adds a small fraction of the weights
    # (it once added 6 x); reading them back, a tensor at a time, a small fraction of each.
    assert sizes["save"] < 0.25 * weights, sizes
    assert sizes["restore_weights"] < 0.25 * weights, sizes
    assert sizes["restore_state"] < 0.25 * state, sizes
