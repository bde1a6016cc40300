#!/usr/bin/env python3
"""Learn a byte-level BPE vocabulary of one's own, e.g. `python train_bpe.py corpus/ --vocab_size 32000
--out models/mine`.

The folder gets encoder.json and vocab.bpe in GPT-2's formats, and an hparams.json, so that encode.py,
train.py and sample.py use the new vocabulary with `--model_name mine` (train.py starting from scratch).
"""

import argparse

from gpt2_tf.bpe import train_bpe
from gpt2_tf.cli import add_text_flags, run_or_exit
from gpt2_tf.dataset import DatasetError


def main():
    parser = argparse.ArgumentParser(
        description="Learn a byte-level BPE vocabulary (GPT-2's byte table and pre-tokenizer) from text "
                    "files, and write encoder.json, vocab.bpe and hparams.json.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("corpus", metavar="CORPUS", nargs="+",
                        help="text files, folders (all files in them, recursively) or glob patterns")
    parser.add_argument("--vocab_size", metavar="N", type=int, required=True, default=argparse.SUPPRESS,
                        help="number of tokens: 256 bytes, the learned merges and <|endoftext|> "
                             "(GPT-2 has 50257)")
    parser.add_argument("--out", metavar="FOLDER", required=True, default=argparse.SUPPRESS,
                        help="model folder to write into, e.g. models/NAME (created if needed)")
    parser.add_argument("--min_frequency", metavar="N", type=int, default=2,
                        help="never merge a pair that occurs fewer times (the vocabulary may then be "
                             "smaller than --vocab_size)")
    add_text_flags(parser)
    for name, default in [("n_ctx", 1024), ("n_embd", 768), ("n_head", 12), ("n_layer", 12)]:
        parser.add_argument(f"--{name}", metavar="N", type=int, default=default,
                            help=f"{name} written to hparams.json, for training a new model")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")
    args = parser.parse_intermixed_args()
    hparams = dict(n_ctx=args.n_ctx, n_embd=args.n_embd, n_head=args.n_head, n_layer=args.n_layer)
    summary = run_or_exit(parser, (DatasetError, OSError), "nothing was written",
                          train_bpe, args.corpus, args.out, args.vocab_size, args.min_frequency,
                          args.encoding, args.errors, hparams, progress=not args.quiet)
    if not args.quiet:
        print(summary)


if __name__ == "__main__":
    main()
