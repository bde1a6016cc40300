"""train_bpe.py: learn a byte-level BPE vocabulary of one's own. The flags and their checks, then
`learn`, the work. This module does not import TensorFlow.
"""

import argparse

from gpt2_tf.bpe import check_output_folder, train_bpe
from gpt2_tf.cli import (
    Parser,
    UsageError,
    add_document_flags,
    add_text_flags,
    check_encoding,
    input_files,
    integer,
    run_script,
    text_format,
)
from gpt2_tf.dataset import DatasetError


def make_parser():
    parser = Parser(
        description="Learn a byte-level BPE vocabulary (GPT-2's byte table and pre-tokenizer) from text "
                    "files, and write encoder.json, vocab.bpe and hparams.json.")
    parser.add_argument("corpus", metavar="CORPUS", nargs="+",
                        help="text files, folders (all files in them, recursively, but hidden ones, "
                             "__pycache__ and files that are not text) or glob patterns")
    parser.add_argument("--vocab_size", metavar="N", type=integer(257), required=True,
                        default=argparse.SUPPRESS,
                        help="number of tokens, at least 257: 256 bytes, the learned merges and "
                             "<|endoftext|> (GPT-2 has 50257)")
    parser.add_argument("--out", metavar="FOLDER", required=True, default=argparse.SUPPRESS,
                        help="model folder to write into, e.g. models/NAME (created if needed)")
    parser.add_argument("--force", action="store_true",
                        help="replace the vocabulary that --out holds (datasets encoded with it then no "
                             "longer match)")
    parser.add_argument("--min_frequency", metavar="N", type=integer(1), default=2,
                        help="never merge a pair that occurs fewer times (the vocabulary may then be "
                             "smaller than --vocab_size)")
    add_text_flags(parser)
    add_document_flags(parser)
    for name, default in [("n_ctx", 1024), ("n_embd", 768), ("n_head", 12), ("n_layer", 12)]:
        parser.add_argument(f"--{name}", metavar="N", type=integer(1), default=default,
                            help=f"{name} written to hparams.json, for training a new model")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")
    parser.add_verbose("name each file skipped as not text")
    return parser


def check_command(args):
    """Check everything that can be checked before counting; returns (input files, skipped files).

    Raises UsageError for an unknown encoding, inputs that are not there and an --out that cannot be
    written.
    """
    if args.n_embd % args.n_head:
        raise UsageError(f"--n_embd ({args.n_embd}) must be a multiple of --n_head ({args.n_head})")
    check_encoding(args.encoding)
    try:
        check_output_folder(args.out, args.force)
    except DatasetError as e:
        raise UsageError(str(e)) from None
    return input_files(args.corpus, args.encoding, args.verbose)


def learn(args, checked):
    """What train_bpe.py does once its flags are checked."""
    files, skipped = checked
    hparams = dict(n_ctx=args.n_ctx, n_embd=args.n_embd, n_head=args.n_head, n_layer=args.n_layer)
    summary = train_bpe(files, args.out, args.vocab_size, args.min_frequency, args.encoding, args.errors,
                        hparams, progress=not args.quiet, skipped=skipped, force=args.force,
                        text_format=text_format(args))
    if not args.quiet:
        print(summary)


def main(argv=None):
    run_script("train_bpe.py", make_parser, check_command, learn, bad_input=(DatasetError,), argv=argv,
               intermixed=True, tensorflow=False)
