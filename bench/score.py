#!/usr/bin/env python3
"""Scoring speed against training speed, side by side in one process.

The 124M shape with random weights. score.py's path (gpt2_tf.score.score_documents) on one document of
--tokens random tokens at --stride = --context = 1024 (no overlap), against train.py's update (forward,
backward and Adam, fp32, the CPU's default graph mode) on --train_batch windows of 1024 tokens: each
tool at its default batch (score.py 8, train.py 1). A
forward pass is about a third of an update's arithmetic, so scoring should reach about 3x the
training tokens/s. Each is warmed up, then timed alternately --repeats times; medians.

    python bench/score.py
    python bench/score.py --repeats 5 --batch_size 4 --train_batch 2
"""

import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import alternate  # noqa: E402  (bench/common.py)

from gpt2_tf.cli import Parser, integer, quiet_tensorflow  # noqa: E402  (before TensorFlow)

quiet_tensorflow("--verbose" in sys.argv)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from gpt2_tf.hparams import released  # noqa: E402
from gpt2_tf.optim import make_optimizer  # noqa: E402
from gpt2_tf.score import Document, score_documents  # noqa: E402
from gpt2_tf.train_step import TrainStep, build_model, trained_variables  # noqa: E402


def main():
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=integer(1024), default=8 * 1024,
                        help="tokens of the scored document")
    parser.add_argument("--batch_size", type=integer(1), default=8, help="windows per scoring call")
    parser.add_argument("--train_batch", type=integer(1), default=1, help="windows per update")
    parser.add_argument("--repeats", type=integer(1), default=3, help="timed rounds")
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's own log lines")
    args = parser.parse_args()
    tf.config.experimental.enable_tensor_float_32_execution(False)
    hp = released("124M")
    model = build_model(hp)
    variables = trained_variables(model)
    optimizer = make_optimizer("adam", 1e-4)
    optimizer.build(list(variables.values()))
    step = TrainStep(model, optimizer, variables.values(), tf.distribute.get_strategy(), args.train_batch, 1,
                     hp.n_ctx)
    rng = np.random.default_rng(0)
    windows = rng.integers(0, hp.n_vocab, size=(1, args.train_batch, hp.n_ctx)).astype(np.int32)
    document = [Document("random", rng.integers(0, hp.n_vocab, size=args.tokens - 1).astype(np.int32))]

    def train():
        step(windows, windows)
        return args.train_batch * hp.n_ctx

    def score():
        return score_documents(model, document, hp.n_ctx, hp.n_ctx, batch_size=args.batch_size)[0].tokens

    runs = alternate([train, score], args.repeats)
    train_rate, score_rate = (statistics.median(tokens / seconds for seconds, tokens in runs[f])
                              for f in (train, score))
    print(f"124M shape, fp32, windows of 1024; medians of {args.repeats}")
    print(f"train.py update, batch {args.train_batch}:      {train_rate:8.0f} tokens/s")
    print(f"score.py, batch {args.batch_size}, stride 1024: {score_rate:8.0f} tokens/s  "
          f"({score_rate / train_rate:.2f}x training)")


if __name__ == "__main__":
    main()
