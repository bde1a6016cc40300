#!/usr/bin/env python3
"""Generate text with GPT-2: unconditional samples, a prompt, or the interactive prompt loop.

    python sample.py --top_p 0.9
    python sample.py --prompt "In a shocking finding," --length 100 --top_k 40
    python sample.py --interactive --run_name run1
    python sample.py --prompts prompts.txt --batch_size 8 --output_format jsonl --output samples.jsonl
    python sample.py --prompt "Once upon a time" --length 3000 --sliding_window
"""

import os
import sys

from gpt2_tf.bundle import CheckpointError
from gpt2_tf.cli import (
    Interrupted,
    Parser,
    UsageError,
    add_text_flags,
    check_encoding,
    check_output_file,
    integer,
    number,
    run_script,
)
from gpt2_tf.model_flags import add_model_flags


def make_parser():
    p = Parser(description="Generate text with GPT-2.")
    add_model_flags(p, "sample from checkpoint_dir/run_name (fine-tuned)")
    p.add_argument("--seed", type=integer(0, 2**31 - 1), default=None,
                   help="random seed; same seed, same samples")
    p.add_argument("--nsamples", type=integer(0), default=1,
                   help="samples per prompt; 0: for ever (no prompt)")
    p.add_argument("--batch_size", type=integer(1), default=1, help="samples drawn together")
    p.add_argument("--length", type=integer(1), default=None,
                   help="tokens per sample (default: n_ctx without a prompt, n_ctx // 2 with one)")
    p.add_argument("--temperature", type=number(low=0), default=1.0, help="0 means greedy")
    p.add_argument("--top_k", type=integer(0), default=0, help="keep the k most likely tokens; 0: all")
    p.add_argument("--top_p", type=number(low=0, high=1), default=1.0,
                   help="nucleus: keep the most likely tokens up to this probability; 0 or 1: all")
    p.add_argument("--prompt", default=None, help="text to continue")
    p.add_argument("--prompt_file", default=None, help="file whose text to continue (see --encoding)")
    p.add_argument("--prompts", default=None, metavar="FILE",
                   help="many prompts: one per line, or JSON Lines ({\"prompt\": ...}) in a .jsonl file; "
                        "generated --batch_size rows at a time, in the file's order")
    p.add_argument("--output_format", choices=["text", "jsonl"], default="text",
                   help="text: the original's banners; jsonl: one {\"prompt\", \"sample\", \"text\"} "
                        "object per sample")
    p.add_argument("--sliding_window", action="store_true",
                   help="let --length pass n_ctx: the context slides, keeping its last n_ctx - "
                        "--window_shift tokens")
    p.add_argument("--window_shift", type=integer(1), default=None,
                   help="tokens the window moves by (default: n_ctx // 2)")
    p.add_argument("--interactive", action="store_true", help="ask for prompts in a loop")
    p.add_argument("--include_prompt", action="store_true", help="print the prompt before each sample")
    p.add_argument("--stop", action="append", metavar="TEXT", help="end a sample at this text (repeatable)")
    p.add_argument("--truncate_prompt", action="store_true",
                   help="cut a too-long prompt from the left instead of refusing it")
    p.add_argument("--output", default=None, metavar="FILE", help="write the samples to FILE (UTF-8)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="weights and cache precision (bfloat16: faster on CPUs that have it)")
    p.add_argument("--compile", choices=["auto", "xla", "graph"], default="auto",
                   help="compile the decoding loop with XLA or as a TensorFlow graph (auto: per device)")
    add_text_flags(p, "of --prompt_file and --prompts")
    p.add_verbose()
    return p


def check_args(args):
    """Check the flags, the model and the prompts before any work (TensorFlow is not imported yet);
    returns what prompts.prepare found. Raises UsageError."""
    from gpt2_tf.prompts import prepare

    if args.nsamples == 0 and (args.prompt or args.prompt_file or args.prompts or args.interactive):
        raise UsageError("--nsamples 0 (for ever) is for unconditional samples only")
    given = [flag for flag in ("prompt", "prompt_file", "prompts", "interactive") if getattr(args, flag)]
    if len(given) > 1:
        raise UsageError(f"give one of --prompt, --prompt_file, --prompts and --interactive, not "
                         f"--{given[0]} and --{given[1]}")
    for flag in ("prompt_file", "prompts"):
        path = getattr(args, flag)
        if path is not None and os.path.isdir(path):
            raise UsageError(f"--{flag} {path} is a folder; give a file")
        if path is not None and not os.path.isfile(path):
            raise UsageError(f"--{flag} {path}: no such file")
    if args.window_shift is not None and not args.sliding_window:
        raise UsageError("--window_shift needs --sliding_window")
    check_encoding(args.encoding)
    if args.output is not None:
        check_output_file(args.output, "--output", [f for f in (args.prompt_file, args.prompts) if f])
    args.compile = {"auto": None, "xla": True, "graph": False}[args.compile]
    args.dtype = None if args.dtype == "float32" else args.dtype
    return prepare(args)


def parse_args(argv=None):
    """The parsed flags, checked (bad values exit 2 with one line)."""
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        check_args(args)
    except UsageError as e:
        parser.error(str(e))
    return args


def generate(args, prepared):
    """What sample.py does once its flags are checked."""
    from gpt2_tf.files import atomic_write
    from gpt2_tf.generate import run

    sys.stdout.reconfigure(errors="replace")  # a console that cannot show a character shows '?'
    if not args.output:
        return run(args, prepared=prepared)
    # A file is written under a temporary name and renamed into place when done or interrupted.
    with atomic_write(args.output, encoding="utf-8") as out:
        try:
            run(args, out, prepared)
            return None
        except KeyboardInterrupt:
            pass  # keep what was written
    raise Interrupted(f"interrupted; the samples drawn so far are in {args.output}")


def main(argv=None):
    return run_script("sample.py", make_parser, check_args, generate, (CheckpointError,),
                      "the samples drawn so far were written", argv)


if __name__ == "__main__":
    main()
