#!/usr/bin/env python3
"""Pre-encode text files into a tokenized training set, e.g. `python encode.py corpus/ data.npz`.

The .npz file can be given to train.py --dataset instead of the text, which then starts at once.
"""

import argparse

from gpt2_tf.cli import add_text_flags, run_or_exit
from gpt2_tf.dataset import DatasetError, default_jobs, encode_dataset


def main():
    parser = argparse.ArgumentParser(
        description="Pre-encode text files into tokenized training set.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model_name", metavar="MODEL", type=str, default="124M",
                        help="model whose tokenizer to use (117M is accepted for 124M)")
    parser.add_argument("--models_dir", metavar="PATH", type=str, default="models",
                        help="folder of the model folders")
    parser.add_argument("--combine", metavar="CHARS", type=int, default=50000,
                        help="join text files, separated by <|endoftext|>, into chunks of at least this "
                             "many characters")
    add_text_flags(parser)
    parser.add_argument("--literal_endoftext", action="store_true",
                        help="separate files with the text <|endoftext|> (7 ordinary tokens), as the "
                             "original did, instead of the <|endoftext|> token; for reproducing old datasets")
    parser.add_argument("--jobs", metavar="N", type=int, default=default_jobs(),
                        help="pieces of text encoded in parallel, by threads (processes without tiktoken); "
                             "the output is the same for any N")
    parser.add_argument("--no_fast", action="store_true",
                        help="use the pure-Python reference tokenizer even if tiktoken is installed "
                             "(same tokens, slower)")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")
    parser.add_argument("in_text", metavar="PATH", type=str,
                        help="input: a text file, a directory (all files in it, recursively), a glob "
                             "pattern, or .npz files (added as they are)")
    parser.add_argument("out_npz", metavar="OUT.npz", type=str,
                        help="output file (.npz is appended if missing)")
    args = parser.parse_args()
    if args.jobs < 1:
        parser.exit(2, f"{parser.prog}: error: --jobs must be at least 1\n")
    summary = run_or_exit(parser, (DatasetError, OSError), "nothing was written",
                          encode_dataset, args.in_text, args.out_npz, args.model_name, args.models_dir,
                          args.combine, args.encoding, args.errors, args.literal_endoftext, args.jobs,
                          fast=not args.no_fast, quiet=args.quiet)
    if not args.quiet:
        print(summary)


if __name__ == "__main__":
    main()
