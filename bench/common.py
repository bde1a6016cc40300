"""Helpers shared by the benchmarks: run a command and read its wall time and peak memory from /proc
(bench/convert.py, bench/cold_start.py); write a model of a released size with random weights in the
released layout; time functions side by side in one process (bench/lens.py, bench/score.py); the
--inter_op_threads flag; print a Markdown table.
"""

import os
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from gpt2_tf.cli import integer  # noqa: E402  (no TensorFlow)


def measure(command, env=None):
    """Run `command`; (seconds, peak RssAnon MiB, peak RSS MiB). RssAnon is what the process allocated
    itself; RSS adds the pages of memory-mapped files it touched. Polled every 20 ms. Raises
    RuntimeError when the command fails."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})})
    peaks, thread = poll_memory(process)
    _, err = process.communicate()
    thread.join()
    seconds = time.perf_counter() - start
    if process.returncode:
        raise RuntimeError(f"{' '.join(command)} failed: {err.strip().splitlines()[-1:]}")
    return seconds, peaks["RssAnon"] / 1024, peaks["VmRSS"] / 1024


def poll_memory(process):
    """Follow a running process's peak RssAnon and VmRSS (KiB, from /proc, every 20 ms) until it ends:
    returns (peaks, thread); join the thread after the process ends, then read peaks."""
    peaks = {"RssAnon": 0, "VmRSS": 0}

    def poll():
        while process.poll() is None:
            try:
                with open(f"/proc/{process.pid}/status") as f:
                    for line in f:
                        key, _, value = line.partition(":")
                        if key in peaks:
                            peaks[key] = max(peaks[key], int(value.split()[0]))
            except OSError:
                pass
            time.sleep(0.02)

    thread = threading.Thread(target=poll)
    thread.start()
    return peaks, thread


WRITE_RANDOM = """
import sys
import numpy as np
from gpt2_tf.checkpoint import save_meta_graph, save_tensors
from gpt2_tf.convert import ModelData, write_vocabulary
from gpt2_tf.encoder import load_encoder_files
from gpt2_tf.hparams import released, save_hparams
folder, size, vocab = sys.argv[1:]
hp = released(size)
rng = np.random.default_rng(0)
weights = {n: (0.02 * rng.standard_normal(s, np.float32)) for n, s in hp.variable_shapes().items()}
save_hparams(hp, folder + "/hparams.json")
data = ModelData(hp, weights, *load_encoder_files(vocab))
write_vocabulary(data, folder + "/encoder.json", folder + "/vocab.bpe")
save_tensors(weights, folder + "/model.ckpt")
save_meta_graph(folder + "/model.ckpt", hp)
"""


def write_random_model(folder, size, vocab):
    """A complete model folder of a released size (random weights, the vocabulary from `vocab`)."""
    os.makedirs(folder, exist_ok=True)
    subprocess.run([sys.executable, "-c", WRITE_RANDOM, folder, size, vocab], check=True, cwd=ROOT,
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, stderr=subprocess.DEVNULL)


def alternate(functions, repeats):
    """Call each function once (tracing, compiling), then all of them in turn `repeats` times; returns
    {function: [(seconds, what it returned), ...]}. Alternating spreads the shared machine's drift
    over all of them alike."""
    for f in functions:
        f()
    runs = {f: [] for f in functions}
    for _ in range(repeats):
        for f in functions:
            start = time.perf_counter()
            result = f()
            runs[f].append((time.perf_counter() - start, result))
    return runs


def add_inter_op_flag(parser):
    """--inter_op_threads N: TensorFlow's threads for independent operations at once (0: its default)."""
    parser.add_argument("--inter_op_threads", type=integer(0), default=0,
                        help="TensorFlow's threads for independent operations at once (0: its default)")


def set_inter_op_threads(count):
    """Give TensorFlow `count` inter-op threads (0: its default); call it before TensorFlow's first
    operation. Returns the words that say so in a table's heading."""
    import tensorflow as tf  # here, since the benchmarks that only run commands do without it

    tf.config.threading.set_inter_op_parallelism_threads(count)
    return f"inter-op threads: {count}" if count else "inter-op threads: TensorFlow's default"


def print_table(columns, rows):
    """Print a Markdown table: `columns`, the titles; `rows`, lists of cells (strings)."""
    for cells in [columns, ["---"] * len(columns), *rows]:
        print("| " + " | ".join(cells) + " |")
