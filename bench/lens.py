#!/usr/bin/env python3
"""The logit lens against one forward pass: what looking inside costs.

The 124M shape with random weights (the cost does not depend on their values), one prompt of
--tokens tokens. Timed side by side, alternating, after a warm-up call of each: one forward pass of
the prompt (the compiled model call that sample.py and score.py make), and the lens's analysis of
the same prompt (gpt2_tf.lens.logit_lens: the forward pass with hidden states, then every layer's
projection onto the vocabulary and its statistics; no drawing). Medians of --repeats.

    python bench/lens.py
    python bench/lens.py --tokens 1024 --repeats 5
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
from gpt2_tf.lens import logit_lens  # noqa: E402
from gpt2_tf.model import GPT2  # noqa: E402


def main():
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=integer(2, 1024), default=64, help="prompt length")
    parser.add_argument("--repeats", type=integer(1), default=9, help="timed calls of each")
    parser.add_argument("--top_k", type=integer(1), default=10, help="top tokens per layer and position")
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's own log lines")
    args = parser.parse_args()
    hp = released("124M")
    model = GPT2(hp)
    tokens = np.random.default_rng(0).integers(0, hp.n_vocab, size=args.tokens).astype(np.int32)
    forward = tf.function(lambda t: model(t)["logits"])

    def one_forward():
        forward(tf.constant(tokens[None])).numpy()

    def analysis():
        logit_lens(model, tokens, top_k=args.top_k, watch_ids=[tokens[0], tokens[1]])

    runs = alternate([one_forward, analysis], args.repeats)
    forward_s, lens_s = (statistics.median(seconds for seconds, _ in runs[f])
                         for f in (one_forward, analysis))
    print(f"124M shape, {args.tokens} tokens, {hp.n_layer + 1} layers, top {args.top_k}; medians of "
          f"{args.repeats}")
    print(f"one forward pass: {1000 * forward_s:8.1f} ms")
    print(f"lens analysis:    {1000 * lens_s:8.1f} ms  ({lens_s / forward_s:.2f}x the forward pass)")


if __name__ == "__main__":
    main()
