#!/usr/bin/env python3
"""Decoding speed of the exported SavedModel against sample.py's, side by side in one process.

A model of the --size shape with random weights is written, exported with `convert.py --to
saved_model`, and loaded back with tf.saved_model.load (what a TensorFlow client does). Then, in turn
--repeats times after a warm-up call each: the SavedModel's `generate_ids` signature (a TensorFlow
graph) and `generate_ids_xla`, and the library's Generator as sample.py runs it (XLA-compiled by
default on a CPU, and as a TensorFlow graph). Each draws --new tokens after a 16-token prompt at batch
--batch, top_k 40. Reported: the median tokens per second and the ratio to sample.py's.

    python bench/serving.py                  # 124M, batch 1
    python bench/serving.py --batch 8
    python bench/serving.py --inter_op_threads 1   # as TF Serving with --tensorflow_inter_op_parallelism=1
"""

import os
import statistics
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from gpt2_tf.cli import Parser, integer, quiet_tensorflow  # noqa: E402  (before TensorFlow)

quiet_tensorflow()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench.common import add_inter_op_flag, alternate, print_table, set_inter_op_threads, write_random_model  # noqa: E402
from gpt2_tf.checkpoint import load_model  # noqa: E402
from gpt2_tf.convert import convert  # noqa: E402
from gpt2_tf.sample import Generator  # noqa: E402

DEFAULT_VOCAB = os.environ.get("GPT2_VOCAB_DIR", os.path.join(ROOT, "..", "shared", "gpt2-vocab"))
PROMPT, TOP_K = 16, 40


def main():
    parser = Parser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="124M")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--new", type=int, default=128, help="new tokens per call")
    parser.add_argument("--repeats", type=integer(1), default=5)
    parser.add_argument("--vocab_dir", default=DEFAULT_VOCAB)
    add_inter_op_flag(parser)
    args = parser.parse_args()
    threads = set_inter_op_threads(args.inter_op_threads)

    with tempfile.TemporaryDirectory() as work:
        folder = os.path.join(work, "model")
        write_random_model(folder, args.size, args.vocab_dir)
        convert(folder, os.path.join(work, "served"), "saved_model", progress=False)
        signatures = tf.saved_model.load(os.path.join(work, "served", "1")).signatures
        model, _ = load_model(folder)
        prompts = np.random.default_rng(0).integers(0, 50257, (args.batch, PROMPT)).astype(np.int32)
        generators = {"sample.py (XLA, the CPU default)": Generator(model, jit_compile=True),
                      "sample.py as a TensorFlow graph": Generator(model, jit_compile=False)}

        def saved_model(name):
            def run():
                out = signatures[name](input_ids=tf.constant(prompts), lengths=tf.fill([args.batch], PROMPT),
                                       max_new_tokens=tf.constant(args.new), temperature=tf.constant(1.0),
                                       top_k=tf.constant(TOP_K), top_p=tf.constant(1.0), seed=tf.constant(0))
                return int(tf.reduce_sum(out["lengths"]))
            return run

        def library(generator):
            def run():
                *_, state = generator.draws(list(prompts), args.new, top_k=TOP_K, seed=0)
                return state.new_tokens().size
            return run

        functions = {"SavedModel generate_ids (graph)": saved_model("generate_ids"),
                     "SavedModel generate_ids_xla": saved_model("generate_ids_xla"),
                     **{name: library(g) for name, g in generators.items()}}
        runs = alternate(list(functions.values()), args.repeats)

    rates = {name: statistics.median(tokens / seconds for seconds, tokens in runs[f])
             for name, f in functions.items()}
    reference = rates["sample.py (XLA, the CPU default)"]
    print(f"\n{args.size} shape, batch {args.batch}, {PROMPT}-token prompt, {args.new} new tokens, top_k "
          f"{TOP_K}, {threads}; medians of {args.repeats} calls each, in turn\n")
    print_table(["decoder", "tokens/s", "vs sample.py"],
                [[name, f"{rate:.1f}", f"{rate / reference:.2f}x"] for name, rate in rates.items()])


if __name__ == "__main__":
    main()
