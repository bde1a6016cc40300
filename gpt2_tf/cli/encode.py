"""encode.py: pre-encode text files into a token file (.npz or nanoGPT's .bin), as a stream. The flags
and their checks, then `encode`, the work. This module does not import TensorFlow.
"""

import os
import sys

from gpt2_tf.cli import (
    Parser,
    UsageError,
    add_bin_dtype_flag,
    add_document_flags,
    add_text_flags,
    check_encoding,
    check_output_file,
    input_files,
    integer,
    run_script,
    text_format,
)
from gpt2_tf.dataset import DatasetError, default_jobs, encode_dataset
from gpt2_tf.hparams import missing_model
from gpt2_tf.token_files import UNCOMPRESSED_FROM, output_name


def make_parser():
    parser = Parser(description="Pre-encode text files into tokenized training set.")
    parser.add_argument("--model_name", metavar="MODEL", type=str, default="124M",
                        help="model whose tokenizer to use (117M is accepted for 124M)")
    parser.add_argument("--models_dir", metavar="PATH", type=str, default="models",
                        help="folder of the model folders")
    parser.add_argument("--combine", metavar="CHARS", type=integer(0), default=50000,
                        help="join text files, separated by <|endoftext|>, into chunks of at least this "
                             "many characters")
    add_text_flags(parser)
    add_document_flags(parser)
    parser.add_argument("--literal_endoftext", action="store_true",
                        help="separate files with the text <|endoftext|> (7 ordinary tokens), as the "
                             "original did, instead of the <|endoftext|> token; for reproducing old datasets")
    parser.add_argument("--jobs", metavar="N", type=integer(1), default=default_jobs(),
                        help="pieces of text encoded in parallel, by threads (processes without tiktoken); "
                             "the output is the same for any N")
    parser.add_argument("--no_fast", action="store_true",
                        help="use the pure-Python reference tokenizer even if tiktoken is installed "
                             "(same tokens, slower)")
    add_bin_dtype_flag(parser)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--compress", dest="compress", action="store_const", const=True, default=None,
                      help="deflate the .npz members (default for inputs under "
                           f"{UNCOMPRESSED_FROM >> 20} MiB in all): the smallest file")
    size.add_argument("--no_compress", dest="compress", action="store_const", const=False,
                      help="store the .npz members uncompressed (default from "
                           f"{UNCOMPRESSED_FROM >> 20} MiB): train.py and score.py memory-map them "
                           "instead of reading them into memory")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")
    parser.add_verbose("name each file skipped as not text")
    parser.add_argument("in_text", metavar="PATH", nargs="+",
                        help="inputs: text files, folders (all files in them, recursively, but hidden ones, "
                             "__pycache__ and files that are not text), glob patterns, or .npz files (added "
                             "as they are), or nanoGPT's .bin files")
    parser.add_argument("out_npz", metavar="OUT.npz", type=str,
                        help="output file, the last argument: an .npz file (.npz is appended to a name "
                             "that ends neither .npz nor .bin), or a .bin file of ids as nanoGPT's; - writes "
                             "the .npz to standard output")
    return parser


def check_command(args):
    """Check everything that can be checked before encoding; returns (input files, skipped files).

    Raises UsageError for an unknown encoding, a missing tokenizer, inputs that are not there and an
    output that cannot be written.
    """
    check_encoding(args.encoding)
    problem = missing_model(args.model_name, args.models_dir, files=("encoder.json", "vocab.bpe"))
    if problem:
        raise UsageError(f"no tokenizer: {problem}")
    if os.path.isdir(args.out_npz):
        raise UsageError(f"the output {args.out_npz} is a folder; the last argument is the .npz file "
                         "to write")
    if args.out_npz == "-" and sys.stdout.isatty():
        raise UsageError("the output - is standard output, a terminal here: redirect it to a file")
    files, skipped = input_files(args.in_text, args.encoding, args.verbose)
    check_output_file(output_name(args.out_npz), "the output", args.in_text + files)
    return files, skipped


def encode(args, checked):
    """What encode.py does once its flags are checked."""
    files, skipped = checked
    summary = encode_dataset(files, args.out_npz, args.model_name, args.models_dir, args.combine,
                             args.encoding, args.errors, args.literal_endoftext, args.jobs,
                             fast=not args.no_fast, quiet=args.quiet, skipped=skipped, compress=args.compress,
                             bin_dtype=args.bin_dtype, text_format=text_format(args))
    if not args.quiet:
        print(summary, file=sys.stderr if args.out_npz == "-" else sys.stdout)


def main(argv=None):
    run_script("encode.py", make_parser, check_command, encode, bad_input=(DatasetError,), argv=argv,
               intermixed=True, tensorflow=False)
