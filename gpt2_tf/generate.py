"""Text generation for sample.py: prompts, stop strings, streaming, and the original's output blocks."""

import itertools
import json
import sys

import numpy as np

from gpt2_tf.checkpoint import CheckpointError, load_model, nonfinite
from gpt2_tf.cli import UsageError
from gpt2_tf.devices import emulated_bfloat16, grow_gpu_memory
from gpt2_tf.model_flags import find_model
from gpt2_tf.prompts import fit, prepare
from gpt2_tf.sample import Generator

# When text has to be checked (stop strings) or shown while it is made, tokens are drawn in chunks
# of this many steps, each chunk one call of the compiled loop.
CHUNK = 8


class GenerationError(CheckpointError):
    """The model drew a token that is not in its vocabulary: its weights are damaged."""


def load(model_name="124M", models_dir="models", run_name=None, checkpoint_dir="checkpoint", dtype=None,
         files=None):
    """(model, hparams, encoder) for a released model or a fine-tuned run (see model_flags.find_model),
    or for the ModelFiles `files` when given."""
    files = files or find_model(model_name, models_dir, run_name, checkpoint_dir)
    model, hparams = load_model(files.weights, hparams=files.hparams, **({"dtype": dtype} if dtype else {}))
    damaged = nonfinite(model)
    if damaged:
        raise CheckpointError(f"{files.weights} is damaged: {damaged}; use an earlier checkpoint")
    return model, hparams, files.encoder()


class Stops:
    """Finds the first stop string in a row's text."""

    def __init__(self, stops):
        self.stops = [s for s in stops if s]

    def cut(self, text):
        """(text before the first stop string, whether one was found)."""
        hits = [text.find(s) for s in self.stops]
        hits = [i for i in hits if i >= 0]
        return (text[:min(hits)], True) if hits else (text, False)

    def hold_back(self):
        """How many trailing characters may still turn out to start a stop string."""
        return max((len(s) - 1 for s in self.stops), default=0)


def generate_texts(generator, enc, contexts, length, temperature=1.0, top_k=0, top_p=1.0, seed=None,
                   stops=(), stream=None, rows=None, window_shift=None):
    """Draw `length` tokens after each context (token lists, of any lengths); returns the new text of
    each row.

    A row whose text contains one of `stops` ends there (the stop string and what follows are cut),
    and drawing ends once every row has ended; until then an ended row is drawn with the others.
    `stream(piece)` receives row 0's text as it is made. `rows` and `window_shift`: see
    `Generator.draws`.
    """
    stops = Stops(stops)
    chunked = bool(stops.stops) or stream is not None
    shown = 0
    for state in generator.draws(contexts, length, temperature, top_k, top_p, seed, rows, window_shift,
                                 chunk=CHUNK if chunked else None):
        tokens = state.new_tokens()
        outside = tokens[(tokens < 0) | (tokens >= len(enc.decoder))]
        if outside.size:
            raise GenerationError(f"the model drew token id {outside[0]}, outside its vocabulary of "
                                  f"{len(enc.decoder)} tokens: its weights are damaged")
        texts, ended = zip(*(stops.cut(enc.decode(row)) for row in tokens))
        done = tokens.shape[1] >= length or all(ended)
        if stream is not None:
            text = texts[0]
            if not (done or ended[0]):
                # Hold back an unfinished UTF-8 character and a possible start of a stop string.
                text = text.rstrip("\ufffd")
                text = text[:max(shown, len(text) - stops.hold_back())]
            if len(text) > shown:
                stream(text[shown:])
                shown = len(text)
        if done:
            return list(texts)


def banner(n, prompt=None):
    """The original's separator before sample n (of prompt number `prompt`, counted from 1, when
    there are several)."""
    name = f"PROMPT {prompt}, SAMPLE {n}" if prompt is not None else f"SAMPLE {n}"
    return "=" * 40 + " " + name + " " + "=" * 40


def run(args, out=None, prepared=None):
    """sample.py, after its flags are parsed: the samples written to `out` (default stdout).
    `prepared`: what `prompts.prepare(args)` returned, when the caller has checked the flags."""
    out = out or sys.stdout
    prepared = prepared or prepare(args)
    grow_gpu_memory()
    emulated = emulated_bfloat16() if args.dtype == "bfloat16" else None
    if emulated:
        print(f"warning: {emulated} has no bfloat16 arithmetic (it is emulated, slower than float32); leave "
              "--dtype out", file=sys.stderr, flush=True)
    model, hparams, _ = load(files=prepared.files, dtype=args.dtype)
    enc = prepared.enc
    generator = Generator(model, jit_compile=args.compile)
    eot = enc.encoder["<|endoftext|>"]
    seed = np.random.randint(2**31) if args.seed is None else args.seed
    stops = args.stop or ()
    length, shift = prepared.length, prepared.shift

    def sample(texts, prompts, first_prompt=0, numbered=False):
        """Write nsamples samples of each prompt (for ever if nsamples is 0), batch_size rows at a time
        whatever the prompts' lengths, in the order of the prompts."""
        def write_banner(job):
            print(banner(job[1] + 1, job[0] + 1 if numbered else None), file=out)

        counts = range(args.nsamples) if args.nsamples else itertools.count()  # 0: one prompt, for ever
        jobs = ((i, n) for i in range(len(texts)) for n in counts)
        streaming = args.batch_size == 1 and out.isatty() and not args.output and args.output_format == "text"
        while batch := list(itertools.islice(jobs, args.batch_size)):
            contexts = [prompts[i] or [eot] for i, _ in batch]
            rows = [(first_prompt + i, n) for i, n in batch]
            stream = None
            if streaming:
                write_banner(batch[0])
                out.write(prefix(texts[batch[0][0]]))
                stream = lambda piece: (out.write(piece), out.flush())  # noqa: E731
            results = generate_texts(generator, enc, contexts, length, args.temperature, args.top_k,
                                     args.top_p, seed, stops, stream, rows, shift)
            for (i, n), text in zip(batch, results):
                if streaming:
                    out.write("\n")
                elif args.output_format == "jsonl":
                    out.write(json.dumps({"prompt": texts[i], "sample": n + 1, "text": text},
                                         ensure_ascii=False) + "\n")
                else:
                    write_banner((i, n))
                    print(prefix(texts[i]) + text, file=out)
            out.flush()

    def prefix(text):
        return text if args.include_prompt else ""

    if not args.interactive:
        sample(prepared.texts, prepared.prompts, numbered=len(prepared.texts) > 1)
        return
    try:
        import readline  # noqa: F401  (input() then edits the line, and writes its prompt to stdout)
    except ImportError:  # not on every platform
        pass
    for number in itertools.count():
        try:
            text = input("Model prompt >>> ")
        except EOFError:
            print()  # the shell's prompt starts on a new line
            return
        if not text:
            print("Prompt should not be empty!")
            continue
        try:
            tokens = fit(enc, text, length, hparams.n_ctx, shift, args.truncate_prompt)
        except UsageError as e:
            print(f"error: {e}", file=sys.stderr)
            continue
        sample([text], [tokens], first_prompt=number)
        print("=" * 80, file=out)
