"""sample.py: generate text with GPT-2, unconditional, from a prompt, from a file of prompts in
batches, or interactively. The flags and their checks (made before TensorFlow is imported), then
`generate`, the work.
"""

import itertools
import json
import os
import sys

import numpy as np

from gpt2_tf.checkpoint_files import CheckpointError
from gpt2_tf.cli import (
    Interrupted,
    Parser,
    UsageError,
    add_text_flags,
    check_encoding,
    check_output_file,
    default,
    integer,
    is_given,
    number,
    run_script,
)
from gpt2_tf.cli.model_flags import add_model_flags, add_prefix_flag, check_litert
from gpt2_tf.cli.prompts import fit, prepare


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
    add_control_flags(p)
    p.add_argument("--prompt", default=None, help="text to continue")
    p.add_argument("--prompt_file", default=None, help="file whose text to continue (see --encoding)")
    add_prefix_flag(p)
    p.add_argument("--prompts", default=None, metavar="FILE",
                   help="many prompts: one per line, or JSON Lines ({\"prompt\": ...}) in a .jsonl file; "
                        "generated --batch_size rows at a time, in the file's order")
    p.add_argument("--output_format", choices=["text", "jsonl"], default="text",
                   help="text: the original's banners; jsonl: one {\"prompt\", \"sample\", \"text\"} "
                        "object per sample (and \"logprobs\" with --logprobs)")
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
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=default("float32"),
                   help="weights and cache precision (bfloat16: faster on CPUs that have it)")
    p.add_argument("--compile", choices=["auto", "xla", "graph"], default=default("auto"),
                   help="compile the decoding loop with XLA or as a TensorFlow graph (auto: per device)")
    add_text_flags(p, "of --prompt_file and --prompts")
    p.add_verbose()
    return p


def add_control_flags(p):
    """The generation controls besides temperature, top-k and top-p (docs/sample.md)."""
    p.add_argument("--repetition_penalty", type=number(above=0), default=1.0, metavar="P",
                   help="CTRL's: divide a positive logit of a token in the context (prompt included) by P, "
                        "multiply a negative one; 1: off")
    p.add_argument("--frequency_penalty", type=number(low=-2, high=2), default=0.0, metavar="F",
                   help="OpenAI's: subtract F x the times a token was drawn (the prompt not counted)")
    p.add_argument("--presence_penalty", type=number(low=-2, high=2), default=0.0, metavar="R",
                   help="OpenAI's: subtract R from every token drawn at least once")
    p.add_argument("--no_repeat_ngram_size", type=integer(0), default=0, metavar="N",
                   help="never draw a token that repeats an N-gram of the context; 0: off")
    p.add_argument("--min_p", type=number(low=0, high=1), default=0.0, metavar="M",
                   help="keep the tokens at least M times as likely as the most likely one; 0: all")
    p.add_argument("--ban", action="append", metavar="TEXT",
                   help="never generate TEXT, as the encoder writes it alone or after a space (repeatable)")
    p.add_argument("--logit_bias", action="append", metavar="ID=VALUE",
                   help="add VALUE (-100 to 100) to the logit of token ID (repeatable)")
    p.add_argument("--logprobs", type=integer(0, 20), default=None, metavar="N",
                   help="with --output_format jsonl: each generated token's log-probability and the N "
                        "most likely tokens at its step (0 to 20)")


def controls(args, enc):
    """The decoding.Controls of the flags; raises UsageError for a --logit_bias that is not ID=VALUE
    with a token of the vocabulary and a value within -100 to 100, or a --ban that encodes to
    nothing."""
    from gpt2_tf.decoding import Controls

    bias = {}
    for item in args.logit_bias or ():
        key, sep, value = item.partition("=")
        try:
            token, value = int(key), float(value)
        except ValueError:
            token = None
        if not sep or token is None:
            raise UsageError(f"--logit_bias {item}: expected ID=VALUE, a token id and a number "
                             "(e.g. 50256=-100)")
        if not 0 <= token < len(enc.decoder):
            raise UsageError(f"--logit_bias {item}: token id {token} is outside the vocabulary (0 to "
                             f"{len(enc.decoder) - 1})")
        if not -100 <= value <= 100:
            raise UsageError(f"--logit_bias {item}: the value must be within -100 to 100")
        bias[token] = value
    banned = []
    for text in args.ban or ():
        if not text:
            raise UsageError("--ban needs a text that is not empty")
        for form in dict.fromkeys([text] + ([] if text.startswith(" ") else [" " + text])):
            banned.append(tuple(enc.encode(form)))
    return Controls(args.repetition_penalty, args.frequency_penalty, args.presence_penalty,
                    args.no_repeat_ngram_size, args.min_p, tuple(sorted(bias.items())),
                    tuple(dict.fromkeys(banned)), args.logprobs)


def check_args(args):
    """Check the flags, the model and the prompts before any work (TensorFlow is not imported yet);
    returns what prompts.prepare found. Raises UsageError."""
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
    if args.logprobs is not None and args.output_format != "jsonl":
        raise UsageError("--logprobs needs --output_format jsonl (the log-probabilities go with each sample)")
    prepared = prepare(args)
    args.controls = controls(args, prepared.enc)
    args.litert = prepared.files.litert
    if args.litert:
        check_litert(prepared.files)
        for flag in ("dtype", "compile"):
            if is_given(getattr(args, flag)):
                raise UsageError(f"--{flag} is for TensorFlow models; {prepared.files.name} is a LiteRT "
                                 "model (its weights' precision was chosen when convert.py wrote it)")
    args.compile = {"auto": None, "xla": True, "graph": False}[args.compile]
    args.dtype = None if args.dtype == "float32" else str(args.dtype)
    return prepared


def parse_args(argv=None):
    """The parsed flags, checked (bad values exit 2 with one line)."""
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        check_args(args)
    except UsageError as e:
        parser.error(str(e))
    return args


def main(argv=None):
    return run_script("sample.py", make_parser, check_args, generate, (CheckpointError,),
                      "the samples drawn so far were written", argv, tensorflow=lambda args: not args.litert)


def generate(args, prepared):
    """What sample.py does once its flags are checked: the samples, on stdout or into --output."""
    from gpt2_tf.files import atomic_write

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


def run(args, out=None, prepared=None):
    """The samples of the checked flags, written to `out` (default stdout). `prepared`: what
    `prompts.prepare(args)` returned (default: it is called)."""
    out = out or sys.stdout
    prepared = prepared or prepare(args)
    hparams = prepared.files.hparams
    writer = Samples(args, out, make_generator(args, prepared.files), prepared)
    if not args.interactive:
        writer.write(prepared.texts, prepared.prompts, numbered=len(prepared.texts) > 1)
        return
    try:
        import readline  # noqa: F401  (input() then edits the line, and writes its prompt to stdout)
    except ImportError:  # not on every platform
        pass
    for prompt_number in itertools.count():
        try:
            text = input("Model prompt >>> ")
        except EOFError:
            print()  # the shell's prompt starts on a new line
            return
        if not text:
            print("Prompt should not be empty!")
            continue
        try:
            tokens = fit(prepared.enc, text, prepared.length, hparams.n_ctx, prepared.shift,
                         args.truncate_prompt, args.prefix)
        except UsageError as e:
            print(f"error: {e}", file=sys.stderr)
            continue
        writer.write([text], [tokens], first_prompt=prompt_number)
        print("=" * 80, file=out)


def make_generator(args, files):
    """The generator of the model in `files`: LiteRT's for a LiteRT model (TensorFlow is never imported
    then), else TensorFlow's, with --dtype and --compile."""
    if files.litert:
        from gpt2_tf.litert_runtime import LiteRTGenerator

        return LiteRTGenerator(files.weights, files.hparams)
    from gpt2_tf.devices import emulated_bfloat16, grow_gpu_memory
    from gpt2_tf.model_files import load
    from gpt2_tf.sample import Generator

    grow_gpu_memory()
    emulated = emulated_bfloat16() if args.dtype == "bfloat16" else None
    if emulated:
        print(f"warning: {emulated} has no bfloat16 arithmetic (it is emulated, slower than float32); leave "
              "--dtype out", file=sys.stderr, flush=True)
    model, _, _ = load(files, dtype=args.dtype)
    return Generator(model, jit_compile=args.compile)


class Samples:
    """Writes the samples of prompts as sample.py prints them: the original's banners, or JSON Lines."""

    def __init__(self, args, out, generator, prepared):
        self.args, self.out, self.generator, self.enc = args, out, generator, prepared.enc
        self.length, self.shift = prepared.length, prepared.shift
        self.seed = np.random.randint(2**31) if args.seed is None else args.seed
        self.streaming = (args.batch_size == 1 and out.isatty() and not args.output
                          and args.output_format == "text")

    def write(self, texts, prompts, first_prompt=0, numbered=False):
        """--nsamples samples of each prompt (for ever if 0), --batch_size rows at a time whatever the
        prompts' lengths, in the order of the prompts; row (i, n) is sample n of prompt first_prompt + i."""
        from gpt2_tf.generate import generate_samples

        args, out = self.args, self.out
        eot = self.enc.encoder["<|endoftext|>"]
        counts = range(args.nsamples) if args.nsamples else itertools.count()  # 0: one prompt, for ever
        jobs = ((i, n) for i in range(len(texts)) for n in counts)
        while batch := list(itertools.islice(jobs, args.batch_size)):
            contexts = [prompts[i] or [eot] for i, _ in batch]
            rows = [(first_prompt + i, n) for i, n in batch]
            stream = None
            if self.streaming:
                self.banner(batch[0], numbered)
                out.write(self.prefix(texts[batch[0][0]]))
                stream = lambda piece: (out.write(piece), out.flush())  # noqa: E731
            results = generate_samples(self.generator, self.enc, contexts, self.length, args.temperature,
                                       args.top_k, args.top_p, self.seed, args.stop or (), stream, rows,
                                       self.shift, args.controls)
            for (i, n), sample in zip(batch, results):
                if self.streaming:
                    out.write("\n")
                elif args.output_format == "jsonl":
                    record = {"prompt": texts[i], "sample": n + 1, "text": sample.text}
                    if sample.scores is not None:
                        record["logprobs"] = self.logprobs(sample)
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
                else:
                    self.banner((i, n), numbered)
                    print(self.prefix(texts[i]) + sample.text, file=out)
            out.flush()

    def logprobs(self, sample):
        """A sample's tokens as JSON: [{token, id, bytes, logprob, top_logprobs: [{token, id, bytes,
        logprob}, ...]}, ...], as the chat completions API gives them (the model's own distribution)."""
        chosen, values, ids = sample.scores
        return [{**self.token(t), "logprob": float(p),
                 "top_logprobs": [{**self.token(i), "logprob": float(v)} for i, v in zip(top_ids, top)]}
                for t, p, top, top_ids in zip(sample.tokens, chosen, values, ids)]

    def token(self, token):
        raw = self.enc.decoder[int(token)]
        return {"token": self.enc.decode([int(token)]), "id": int(token),
                "bytes": [self.enc.byte_decoder[c] for c in raw]}

    def banner(self, job, numbered):
        print(banner(job[1] + 1, job[0] + 1 if numbered else None), file=self.out)

    def prefix(self, text):
        return text if self.args.include_prompt else ""


def banner(n, prompt=None):
    """The original's separator before sample n (of prompt number `prompt`, counted from 1, when
    there are several)."""
    name = f"PROMPT {prompt}, SAMPLE {n}" if prompt is not None else f"SAMPLE {n}"
    return "=" * 40 + " " + name + " " + "=" * 40
