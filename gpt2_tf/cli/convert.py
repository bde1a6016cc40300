"""convert.py: move a GPT-2 model between TF1 checkpoints, Hugging Face, KerasHub presets, SavedModels
and LiteRT.
The flags and their checks, then `convert`, the work.
"""

import os
import sys

from gpt2_tf.cli import Parser, UsageError, check_folder_or_new, run_script
from gpt2_tf.convert import FORMATS


def make_parser():
    p = Parser(description="Convert a GPT-2 model between formats. SRC's format is detected: a model or "
                           "run folder or checkpoint prefix (tf1), a Hugging Face folder (hf), or a KerasHub "
                           "preset (keras_hub). DST is a new folder, written completely or not at all.")
    p.add_argument("src", metavar="SRC", help="the model to read")
    p.add_argument("dst", metavar="DST", help="the folder to write (must not exist, or be empty)")
    p.add_argument("--to", choices=FORMATS, default=None,
                   help="the format to write (default: tf1; required when SRC is tf1)")
    p.add_argument("--quantize", choices=["int8", "float32"], default=None,
                   help="with --to litert: the weights as int8 (default; 4x smaller, faster) or float32")
    p.add_argument("--merge", action="store_true",
                   help="SRC a LoRA run: write its base model with the update merged into the weights "
                        "(without it, --to hf writes the adapter alone, as peft does)")
    p.add_argument("--quiet", action="store_true", help="no progress (warnings are still shown)")
    p.add_verbose()
    return p


def check_args(args):
    """Check SRC, DST and --to before any work; returns SRC's format. Raises UsageError."""
    from gpt2_tf.convert import ConvertError, detect_format

    try:
        fmt = detect_format(args.src)
    except ConvertError as e:
        raise UsageError(str(e)) from None
    if args.to is None:
        if fmt == "tf1":
            raise UsageError(f"{args.src} is a TF1 checkpoint already: say what to write with --to hf or "
                             f"--to keras_hub (or --to tf1 to make a model folder of it)")
        args.to = "tf1"
    adapted = fmt == "tf1" and lora_record(args.src) is not None
    if args.merge and not adapted:
        raise UsageError(f"--merge is for a LoRA run (its lora.json); {args.src} is a whole model")
    if adapted and args.to == "tf1" and not args.merge:
        raise UsageError(f"{args.src} is a LoRA run (its factors alone): --merge writes its base model with "
                         "the update merged, --to hf writes the adapter as peft does")
    if args.quantize is not None and args.to != "litert":
        raise UsageError(f"--quantize is for --to litert; {args.to} keeps the weights as they are")
    args.quantize = args.quantize or "int8"
    check_folder_or_new(args.dst, "DST")
    if os.path.isdir(args.dst) and os.listdir(args.dst):
        raise UsageError(f"DST {args.dst} already exists and is not empty; give a new folder")
    return fmt


def lora_record(src):
    """The lora.json record of SRC's run (a run folder or a checkpoint prefix in one), or None."""
    from gpt2_tf.lora import read_record

    return read_record(src if os.path.isdir(src) else os.path.dirname(src) or ".")


def convert(args, fmt):
    """What convert.py does: read SRC, write DST, warn about what was lossy."""
    from gpt2_tf.convert import read, write

    data = read(args.src, fmt)
    for note in data.notes:
        print(f"warning: {note}", file=sys.stderr)
    write(data, args.dst, args.to, progress=not args.quiet, quantize=args.quantize, merge=args.merge)
    if not args.quiet:
        print(f"wrote {args.dst} ({args.to}, from {fmt} {args.src})", file=sys.stderr)


def main(argv=None):
    from gpt2_tf.checkpoint_files import CheckpointError
    from gpt2_tf.convert import ConvertError

    run_script("convert.py", make_parser, check_args, convert, (ConvertError, CheckpointError, ValueError),
               "nothing was written", argv, tensorflow=lambda args: args.to != "hf")
