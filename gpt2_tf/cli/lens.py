"""lens.py: the logit lens of a prompt, what GPT-2 would predict after each layer. The flags and
their checks (made before TensorFlow is imported), then `run`, the work.
"""

import sys

from gpt2_tf import lens_report
from gpt2_tf.checkpoint_files import CheckpointError
from gpt2_tf.cli import (
    Parser,
    UsageError,
    add_view_flags,
    check_view_files,
    integer,
    number,
    run_script,
    tables_stream,
)
from gpt2_tf.cli.model_flags import add_model_flags, add_prefix_flag, check_model_flags, prefixed
from gpt2_tf.token_text import Labels, quoted


def make_parser():
    p = Parser(description="Project each layer's hidden state onto the vocabulary (the logit lens) and "
                           "show what GPT-2 would predict after each layer.")
    add_model_flags(p, "use the newest checkpoint of checkpoint_dir/run_name (fine-tuned)")
    p.add_argument("--prompt", required=True, help="the text to look at")
    add_prefix_flag(p)
    p.add_argument("--position", type=integer(0), default=None,
                   help="token position of the per-layer table and the watched tokens (default: the last "
                        "prompt token)")
    p.add_argument("--watch", nargs="+", metavar="TEXT", default=[],
                   help="tokens to follow through the layers, e.g. ' is' ' are' (mind the leading space)")
    p.add_argument("--top_k", type=integer(1), default=10, help="top tokens shown per layer")
    p.add_argument("--generate", type=integer(0), default=0,
                   help="first continue the prompt with this many tokens, then show their rank at each layer")
    p.add_argument("--temperature", type=number(low=0), default=0.0,
                   help="for --generate; 0 means greedy")
    p.add_argument("--sample_top_k", type=integer(0), default=0,
                   help="for --generate: keep the k most likely tokens; 0: all")
    p.add_argument("--top_p", type=number(low=0, high=1), default=1.0, help="for --generate: nucleus")
    p.add_argument("--seed", type=integer(0, 2**31 - 1), default=None, help="for --generate")
    p.add_argument("--no_final_ln", action="store_true",
                   help="project the layers before the last without ln_f (Ecco's variant)")
    p.add_argument("--ecco", action="store_true",
                   help="Ecco's conventions: --no_final_ln, no row for the embeddings, layers numbered "
                        "from 0 (Ecco's layer 0 is our 1), and --position counting the token predicted "
                        "(Ecco's position=6 is our --position 5)")
    add_view_flags(p, "write the numbers as JSON", "write a self-contained HTML page of the heatmaps",
                   "draw the rank heatmap and the watched tokens")
    p.add_verbose()
    return p


def check_args(args):
    """Check the flags, the model and the prompt before any work (TensorFlow is not imported yet);
    returns (the model's files, the encoder, the prompt's tokens, the watched ids). Raises UsageError."""
    if not args.prompt:
        raise UsageError("the prompt is empty: give --prompt some text")
    files = check_model_flags(args)
    check_view_files(args)
    enc = files.encoder()
    prompt = prefixed(enc, args.prefix, enc.encode(args.prompt))
    n_ctx = files.hparams.n_ctx
    if len(prompt) + args.generate > n_ctx:
        raise UsageError(f"the prompt has {len(prompt)} tokens" + (f" and --generate adds {args.generate}"
                         if args.generate else "") + f": at most n_ctx = {n_ctx} together")
    if args.ecco and args.position is not None and not 1 <= args.position <= len(prompt):
        raise UsageError(f"--position {args.position} with --ecco counts the token predicted: 1 to "
                         f"{len(prompt)} for the prompt's {len(prompt)} tokens")
    if not args.ecco and args.position is not None and not 0 <= args.position < len(prompt):
        raise UsageError(f"--position {args.position} is outside the prompt's {len(prompt)} tokens (0 to "
                         f"{len(prompt) - 1})")
    watch_ids = []
    for text in args.watch:
        ids = enc.encode(text)
        if not ids:
            raise UsageError(f"--watch {text!r} is empty: give the text of a token, e.g. ' is'")
        if len(ids) > 1:
            print(f"warning: --watch {text!r} is {len(ids)} tokens; its first, {enc.decode(ids[:1])!r}, is "
                  "watched", file=sys.stderr)
        watch_ids.append(ids[0])
    return files, enc, prompt, watch_ids


def look(args, checked):
    """What lens.py does once its flags are checked."""
    sys.stdout.reconfigure(errors="replace")  # a console that cannot show a character shows '?'
    return run(args, checked=checked)


def main(argv=None):
    return run_script("lens.py", make_parser, check_args, look, (CheckpointError,), "nothing was written",
                      argv)




def run(args, out=None, checked=None):
    """lens.py: load the model, continue the prompt with --generate, compute the lens, print the
    tables to `out` (default stdout; stderr when a file is written to standard output) and write the
    requested files. `checked`: what lens.py's check_args returned (the model's files, the encoder,
    the prompt's tokens, the watched ids)."""
    from gpt2_tf.devices import grow_gpu_memory
    from gpt2_tf.lens import ecco_rows, logit_lens
    from gpt2_tf.model_files import load
    from gpt2_tf.sample import sample_sequence

    files, enc, prompt, watch_ids = checked
    out = out or tables_stream(args)
    grow_gpu_memory()
    model, hparams, _ = load(files)
    final_norm = not (args.no_final_ln or args.ecco)
    position = len(prompt) - 1 if args.position is None else args.position - args.ecco
    tokens = prompt
    if args.generate:
        tokens = sample_sequence(model, args.generate, context=[prompt], temperature=args.temperature,
                                 top_k=args.sample_top_k, top_p=args.top_p, seed=args.seed)[0].tolist()
    lens = logit_lens(model, tokens, position, args.top_k, watch_ids, final_norm=final_norm)
    if args.ecco:
        lens = ecco_rows(lens)

    labels = Labels(enc, tokens)
    if not args.quiet:
        lines = lens_report.layer_table(lens, labels)
        if args.ecco:
            lines.insert(0, f"Ecco's conventions: position={position + 1} (the token predicted), layers 0 to "
                            f"{len(lens.layers) - 1} (the blocks' outputs), no ln_f before the last")
        if args.generate:
            lines += [""] + lens_report.rank_table(lens, labels, len(prompt) - 1)
        print("\n".join(lines), file=out)
    title = f"{args.run_name or args.model_name}: {quoted(args.prompt)}"
    if args.json:
        data = lens_report.to_json(lens, labels, len(prompt), final_norm)
        lens_report.write_json(args.json, data)
    if args.html:
        lens_report.write_html(args.html, lens, labels, hparams.n_vocab, title, len(prompt))
    if args.png:
        lens_report.write_png(args.png, lens, labels, hparams.n_vocab, title, len(prompt))
    return lens
