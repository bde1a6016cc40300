"""Text generation for sample.py: prompts, stop strings, streaming, and the original's output blocks."""

import os
import sys

import numpy as np

from gpt2_tf.checkpoint import CheckpointError, latest, load_model, nonfinite
from gpt2_tf.encoder import get_encoder
from gpt2_tf.hparams import load_hparams, missing_model, model_dir
from gpt2_tf.sample import Generator

# When text has to be checked (stop strings) or shown while it is made, tokens are drawn in chunks
# of this many steps, each chunk one call of the compiled loop.
CHUNK = 8


class GenerationError(ValueError):
    """The model drew a token that is not in its vocabulary: its weights are damaged."""


def find_model(model_name="124M", models_dir="models", run_name=None, checkpoint_dir="checkpoint"):
    """Where to read weights and tokenizer: (checkpoint folder or prefix, tokenizer folder).

    With run_name, the newest checkpoint of `checkpoint_dir/run_name`; its tokenizer files if it
    has them (train.py copies them there), else those of the base model.
    """
    base = model_dir(model_name, models_dir)
    if run_name is None:
        return base, base
    run = os.path.join(checkpoint_dir, run_name)
    if not os.path.isdir(run):
        raise CheckpointError(f"no training run at {run}")
    tokenizer = run if os.path.exists(os.path.join(run, "encoder.json")) else base
    return latest(run), tokenizer


def load(model_name="124M", models_dir="models", run_name=None, checkpoint_dir="checkpoint", dtype=None):
    """(model, hparams, encoder) for a released model or a fine-tuned run."""
    weights, tokenizer = find_model(model_name, models_dir, run_name, checkpoint_dir)
    problem = missing_model(model_name, models_dir) if run_name is None else None
    if problem:
        raise CheckpointError(problem)
    hparams = None
    if run_name is not None and not os.path.exists(os.path.join(os.path.dirname(weights), "hparams.json")):
        hparams = load_hparams(model_dir(model_name, models_dir))  # a run written by the original trainer
    model, hparams = load_model(weights, hparams=hparams, **({"dtype": dtype} if dtype else {}))
    damaged = nonfinite(model)
    if damaged:
        raise CheckpointError(f"{weights} is damaged: {damaged}; use an earlier checkpoint")
    return model, hparams, get_encoder(os.path.basename(tokenizer), os.path.dirname(tokenizer) or ".")


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


def generate_texts(generator, enc, context, length, temperature=1.0, top_k=0, top_p=1.0, seed=None,
                   stops=(), stream=None):
    """Draw `length` tokens after each row of context [B, T]; returns the new text of each row.

    A row whose text contains one of `stops` ends there (the stop string and what follows are cut),
    and drawing ends once every row has ended. `stream(piece)` receives row 0's text as it is made.
    """
    stops = Stops(stops)
    context = np.asarray(context, np.int32)
    prompt_length = context.shape[1]
    chunked = bool(stops.stops) or stream is not None
    first = min(CHUNK, length) if chunked else length
    state = generator.start(context, prompt_length + length, temperature, top_k, top_p, seed)
    generator.extend(state, first - 1)
    shown = 0
    while True:
        tokens = state.numpy()[:, prompt_length:]
        outside = tokens[(tokens < 0) | (tokens >= len(enc.decoder))]
        if outside.size:
            raise GenerationError(f"the model drew token id {outside[0]}, outside its vocabulary of "
                                  f"{len(enc.decoder)} tokens: its weights are damaged")
        texts, ended = zip(*(stops.cut(enc.decode(row)) for row in tokens))
        done = state.length - prompt_length >= length or all(ended)
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
        generator.extend(state, min(CHUNK, prompt_length + length - state.length))


def banner(n):
    """The original's separator before sample n."""
    return "=" * 40 + " SAMPLE " + str(n) + " " + "=" * 40


def run(args, out=None):
    """sample.py, after its flags are parsed. Writes the samples to `out` (default stdout)."""
    out = out or sys.stdout
    model, hparams, enc = load(args.model_name, args.models_dir, args.run_name, args.checkpoint_dir,
                               dtype=args.dtype)
    generator = Generator(model, jit_compile=args.compile)
    eot = enc.encoder["<|endoftext|>"]
    prompt_text = args.prompt
    if args.prompt_file:
        with open(args.prompt_file, encoding="utf-8") as f:
            prompt_text = f.read()
    if args.nsamples and args.batch_size > args.nsamples:
        args.batch_size = args.nsamples
    streaming = args.batch_size == 1 and out.isatty() and not args.output
    stops = args.stop or ()

    def sample(prompt_tokens, length):
        """Print nsamples samples (for ever if nsamples is 0) continuing prompt_tokens."""
        context = [prompt_tokens or [eot]] * args.batch_size
        prefix = enc.decode(prompt_tokens) if args.include_prompt and prompt_tokens else ""
        generated = 0
        while not args.nsamples or generated < args.nsamples:
            seed = None if args.seed is None else args.seed + generated
            if streaming:
                print(banner(generated + 1), file=out)
                out.write(prefix)
                texts = generate_texts(generator, enc, context, length, args.temperature, args.top_k,
                                       args.top_p, seed, stops, stream=lambda s: (out.write(s), out.flush()))
                out.write("\n")
                generated += 1
                continue
            texts = generate_texts(generator, enc, context, length, args.temperature, args.top_k,
                                   args.top_p, seed, stops)
            for text in texts[:args.nsamples - generated if args.nsamples else None]:
                generated += 1
                print(banner(generated), file=out)
                print(prefix + text, file=out)
            out.flush()

    def prepare(text):
        """(prompt tokens, number of tokens to draw), within the model's n_ctx positions."""
        tokens = enc.encode(text)
        length = args.length or (hparams.n_ctx // 2 if tokens else hparams.n_ctx)
        if length > hparams.n_ctx or (tokens and length >= hparams.n_ctx):
            raise ValueError(f"Can't get samples longer than window size: {hparams.n_ctx}")
        if len(tokens) + length > hparams.n_ctx:
            if not args.truncate_prompt:
                raise ValueError(f"the prompt has {len(tokens)} tokens and {length} are to be generated: "
                                 f"together at most n_ctx = {hparams.n_ctx}; shorten the prompt, lower "
                                 "--length, or pass --truncate_prompt")
            keep = hparams.n_ctx - length
            print(f"warning: prompt cut from {len(tokens)} to its last {keep} tokens", file=sys.stderr)
            tokens = tokens[-keep:]
        return tokens, length

    if not args.interactive:
        sample(*prepare(prompt_text or ""))
        return
    try:
        import readline  # noqa: F401  (input() then edits the line, and writes its prompt to stdout)
    except ImportError:  # not on every platform
        pass
    while True:
        try:
            text = input("Model prompt >>> ")
        except EOFError:
            print()  # the shell's prompt starts on a new line
            return
        if not text:
            print("Prompt should not be empty!")
            continue
        try:
            sample(*prepare(text))
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            continue
        print("=" * 80, file=out)
