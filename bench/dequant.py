#!/usr/bin/env python3
"""Whether int8 weights can speed up batch-1 decoding in stock TensorFlow on this machine.

Batch-1 decoding reads every weight once per token, so weights of 1 byte instead of 4 could make it
up to 4x faster, if the matrix-vector products read the int8 weights directly. This times one pass
over the 124M shape's 48 Conv1D weights (85 M values): float32 matmuls, against int8 weights cast to
float32 and scaled per output channel (weight-only quantization as TensorFlow can express it), each
as a TensorFlow graph and compiled by XLA. Medians of --repeats passes.

    python bench/dequant.py
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

SHAPES = [(768, 2304), (768, 768), (768, 3072), (3072, 768)] * 12  # c_attn, c_proj, c_fc, mlp c_proj


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    floats = [tf.constant(rng.standard_normal(s, np.float32)) for s in SHAPES]
    ints = [tf.constant(rng.integers(-127, 128, s, np.int8)) for s in SHAPES]
    scales = [tf.constant(rng.random(s[1], np.float32)) for s in SHAPES]
    x = tf.constant(rng.standard_normal((1, 3072), np.float32))

    def float32(x):
        return tf.add_n([tf.reduce_sum(tf.matmul(x[:, :w.shape[0]], w)) for w in floats])

    def int8(x):
        return tf.add_n([tf.reduce_sum(tf.matmul(x[:, :w.shape[0]], tf.cast(w, tf.float32)) * s)
                         for w, s in zip(ints, scales)])

    weights = sum(a * b for a, b in SHAPES)
    print(f"one pass over {weights / 1e6:.0f} M weights, batch 1, median of {args.repeats}")
    for name, function in (("float32", float32), ("int8, cast and scaled", int8)):
        for jit in (False, True):
            compiled = tf.function(function, jit_compile=jit)
            compiled(x).numpy()
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                compiled(x).numpy()
                times.append(time.perf_counter() - start)
            print(f"{name:24} {'XLA' if jit else 'graph':6} {statistics.median(times) * 1000:6.1f} ms")


if __name__ == "__main__":
    main()
