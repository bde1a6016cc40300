#!/usr/bin/env python3
"""Where a TensorFlow graph loses to XLA when decoding at batch 1: per-operation overhead, and the
product that makes the logits. Both side by side, in turn, in one process.

1. Overhead: the SavedModel's decoding function (`serving.generate_ids`, as exported) for a 12-layer
   model only 64 wide, 512 tokens of vocabulary: its products cost next to nothing, so what is left is
   running about a thousand small operations per token (a graph) or a few fused loops (XLA).
2. The logits: one hidden state [1, 768] times the 124M model's embedding matrix [50257, 768]
   transposed, repeated 20 times in one function: as a TensorFlow MatMul, and compiled by XLA.

    python bench/graph_overhead.py
    python bench/graph_overhead.py --inter_op_threads 1
"""

import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from gpt2_tf.cli import Parser, integer, quiet_tensorflow  # noqa: E402  (before TensorFlow)

quiet_tensorflow()

import tensorflow as tf  # noqa: E402

from bench.common import add_inter_op_flag, alternate, print_table, set_inter_op_threads  # noqa: E402
from gpt2_tf import serving  # noqa: E402
from gpt2_tf.hparams import HParams  # noqa: E402
from gpt2_tf.model import GPT2  # noqa: E402

NEW, PRODUCTS = 256, 20


def main():
    parser = Parser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=integer(1), default=5)
    add_inter_op_flag(parser)
    args = parser.parse_args()
    threads = set_inter_op_threads(args.inter_op_threads)

    hp = HParams(n_vocab=512, n_ctx=1024, n_embd=64, n_head=4, n_layer=12)
    model = GPT2(hp)
    model(tf.zeros([1, 1], tf.int32))
    prompt = tf.constant([list(range(16))], tf.int32)

    def decoder(xla):
        # <|endoftext|> is given an id no token has, so that every call draws all NEW tokens.
        function = tf.function(lambda *a: serving.generate_ids(model, hp.n_vocab, *a, xla=xla),
                               autograph=False)
        settings = [tf.constant(NEW), tf.constant(1.0), tf.constant(40), tf.constant(1.0), tf.constant(0)]
        return lambda: (function(prompt, tf.constant([16]), *settings), NEW)[1]

    wte = tf.Variable(tf.random.normal([50257, 768], stddev=0.02))
    hidden = tf.random.normal([1, 768])

    def logits(xla):
        def repeated(h):
            total = tf.zeros([])
            for _ in range(PRODUCTS):  # each product waits for the one before
                total += tf.reduce_sum(tf.matmul(h + 0 * total, wte, transpose_b=True)[:, :1])
            return total
        function = tf.function(repeated, jit_compile=xla, autograph=False)
        return lambda: (function(hidden).numpy(), PRODUCTS)[1]

    functions = {"decoding, 12 layers 64 wide: graph": decoder(False),
                 "decoding, 12 layers 64 wide: XLA": decoder(True),
                 "logits of the 124M shape: graph": logits(False),
                 "logits of the 124M shape: XLA": logits(True)}
    runs = alternate(list(functions.values()), args.repeats)
    print(f"\nbatch 1, {threads}; medians of {args.repeats} calls each, in turn\n")
    milliseconds = {name: 1000 * statistics.median(s / n for s, n in runs[f])
                    for name, f in functions.items()}
    print_table(["what", "ms per token (decoding) or per product (logits)"],
                [[name, f"{ms:.2f}"] for name, ms in milliseconds.items()])


if __name__ == "__main__":
    main()
