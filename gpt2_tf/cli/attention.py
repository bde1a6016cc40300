"""attention.py: where each head of each layer looks, for a prompt. The flags and their checks (made
before TensorFlow is imported), then `run`, the work.
"""

import sys

from gpt2_tf import attention_report
from gpt2_tf.checkpoint_files import CheckpointError
from gpt2_tf.cli import (
    Parser,
    UsageError,
    add_view_flags,
    check_view_files,
    integer,
    run_script,
    tables_stream,
)
from gpt2_tf.cli.model_flags import add_model_flags, add_prefix_flag, check_model_flags, prefixed
from gpt2_tf.lens_report import write_json
from gpt2_tf.token_text import Labels, quoted


def make_parser():
    p = Parser(description="Show GPT-2's attention weights for a prompt: where each head of each layer "
                           "looks from each token.")
    add_model_flags(p, "use the newest checkpoint of checkpoint_dir/run_name (fine-tuned)")
    p.add_argument("--prompt", required=True, help="the text to look at")
    add_prefix_flag(p)
    p.add_argument("--layer", type=integer(0), default=0, help="the layer drawn in detail (0: model/h0)")
    p.add_argument("--head", type=integer(0), default=0, help="the head of --layer drawn in detail")
    p.add_argument("--position", type=integer(0), default=None,
                   help="the token whose heaviest keys are printed (default: the last)")
    add_view_flags(p, "write the weights [layer][head][query][key] as JSON",
                   "write a self-contained page: hover over a token to see where each head looks",
                   "draw every layer x head, and --layer --head in detail")
    p.add_verbose()
    return p


def check_args(args):
    """Check the flags, the model and the prompt before any work (TensorFlow is not imported yet);
    returns (the model's files, the encoder, the prompt's tokens). Raises UsageError."""
    if not args.prompt:
        raise UsageError("the prompt is empty: give --prompt some text")
    files = check_model_flags(args)
    hp = files.hparams
    check_view_files(args)
    if args.layer >= hp.n_layer:
        raise UsageError(f"--layer {args.layer}: the model has layers 0 to {hp.n_layer - 1}")
    if args.head >= hp.n_head:
        raise UsageError(f"--head {args.head}: each layer has heads 0 to {hp.n_head - 1}")
    enc = files.encoder()
    tokens = prefixed(enc, args.prefix, enc.encode(args.prompt))
    if len(tokens) > hp.n_ctx:
        raise UsageError(f"the prompt has {len(tokens)} tokens: at most n_ctx = {hp.n_ctx}")
    if args.position is not None and args.position >= len(tokens):
        raise UsageError(f"--position {args.position} is outside the prompt's {len(tokens)} tokens (0 to "
                         f"{len(tokens) - 1})")
    return files, enc, tokens


def look(args, checked):
    """What attention.py does once its flags are checked."""
    sys.stdout.reconfigure(errors="replace")  # a console that cannot show a character shows '?'
    return run(args, checked=checked)


def main(argv=None):
    return run_script("attention.py", make_parser, check_args, look, (CheckpointError,),
                      "nothing was written", argv)


def run(args, out=None, checked=None):
    """attention.py: load the model, compute the prompt's attention weights [L, H, T, T], print the
    tables to `out` (default stdout; stderr when a file is written to standard output) and write the
    requested files. `checked`: what check_args returned. Returns the weights (numpy)."""
    import tensorflow as tf

    from gpt2_tf.devices import grow_gpu_memory
    from gpt2_tf.model_files import load

    files, enc, tokens = checked
    out = out or tables_stream(args)
    grow_gpu_memory()
    model, _, _ = load(files)
    weights = model(tf.constant([tokens], tf.int32), return_attention=True)["attention"][0].numpy()
    labels = Labels(enc, tokens)
    position = len(tokens) - 1 if args.position is None else args.position
    if not args.quiet:
        print("\n".join(attention_report.summary(weights, labels, position)), file=out)
    title = f"{args.run_name or args.model_name}: {quoted(args.prompt)}"
    if args.json:
        write_json(args.json, attention_report.to_json(weights, labels, args.prompt, args.prefix))
    if args.html:
        attention_report.write_html(args.html, weights, labels, title)
    if args.png:
        attention_report.write_png(args.png, weights, labels, title, args.layer, args.head)
    return weights
