"""Text generation for sample.py: prompts, stop strings, streaming, and the original's output blocks."""

import itertools
import json
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


def read_prompts(path):
    """The prompts of a --prompts file: one per line (blank lines skipped), or in a .jsonl file one JSON
    object {"prompt": text} per line, for prompts that hold newlines."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    if not path.endswith(".jsonl"):
        return [line for line in lines if line.strip()]
    prompts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} line {number} is not JSON ({e.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            raise ValueError(f'{path} line {number}: expected an object with a "prompt" string')
        prompts.append(record["prompt"])
    return prompts


def run(args, out=None):
    """sample.py, after its flags are parsed. Writes the samples to `out` (default stdout)."""
    out = out or sys.stdout
    model, hparams, enc = load(args.model_name, args.models_dir, args.run_name, args.checkpoint_dir,
                               dtype=args.dtype)
    generator = Generator(model, jit_compile=args.compile)
    eot = enc.encoder["<|endoftext|>"]
    seed = np.random.randint(2**31) if args.seed is None else args.seed
    stops = args.stop or ()
    shift = (args.window_shift or hparams.n_ctx // 2) if args.sliding_window else None

    def prepare(text, length):
        """The prompt's tokens, within the model's n_ctx positions."""
        tokens = enc.encode(text)
        limit = hparams.n_ctx if shift else hparams.n_ctx - length
        if shift is None and (length > hparams.n_ctx or (tokens and length >= hparams.n_ctx)):
            raise ValueError(f"Can't get samples longer than window size: {hparams.n_ctx} (--sliding_window "
                             f"goes on past it)")
        if len(tokens) > limit:
            if not args.truncate_prompt:
                raise ValueError(f"the prompt has {len(tokens)} tokens and {length} are to be generated: "
                                 f"together at most n_ctx = {hparams.n_ctx}; shorten the prompt, lower "
                                 "--length, or pass --truncate_prompt or --sliding_window"
                                 if shift is None else
                                 f"the prompt has {len(tokens)} tokens, more than n_ctx = {hparams.n_ctx}; "
                                 f"shorten it or pass --truncate_prompt")
            print(f"warning: prompt cut from {len(tokens)} to its last {limit} tokens", file=sys.stderr)
            tokens = tokens[-limit:]
        return tokens

    def sample(texts, first_prompt=0, numbered=False):
        """Write nsamples samples of each text (for ever if nsamples is 0), batch_size rows at a time
        whatever the prompts' lengths, in the order of the texts."""
        def write_banner(job):
            print(banner(job[1] + 1, job[0] + 1 if numbered else None), file=out)

        length = args.length or (hparams.n_ctx if not any(texts) else hparams.n_ctx // 2)
        prompts = [prepare(text, length) for text in texts]
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

    if args.prompts:
        texts = read_prompts(args.prompts)
        if not texts:
            raise ValueError(f"{args.prompts} holds no prompts")
        sample(texts, numbered=len(texts) > 1)
        return
    if not args.interactive:
        text = args.prompt or ""
        if args.prompt_file:
            with open(args.prompt_file, encoding="utf-8") as f:
                text = f.read()
        sample([text])
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
            sample([text], first_prompt=number)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            continue
        print("=" * 80, file=out)
