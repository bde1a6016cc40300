"""sample.py's prompts, made ready before TensorFlow loads: read from --prompt, --prompt_file or a
--prompts file, tokenized, and fitted into the model's n_ctx positions with the tokens to be drawn.
Everything here can be known from hparams.json and the tokenizer, so a prompt that does not fit is
told at once. This module does not import TensorFlow.
"""

import dataclasses
import json
import sys

from gpt2_tf.cli import UsageError, check_fits
from gpt2_tf.cli.model_flags import check_model_flags, prefixed
from gpt2_tf.dataset import DatasetError, read_text
from gpt2_tf.encoder import Encoder
from gpt2_tf.model_files import ModelFiles


@dataclasses.dataclass
class Prepared:
    """What sample.py's checks found: the model's files, its tokenizer, the prompts' texts and tokens
    (none in interactive mode: they come later), the tokens to draw per sample, and the window shift
    (None without --sliding_window)."""

    files: ModelFiles
    enc: Encoder
    texts: list
    prompts: list
    length: int
    shift: "int | None"


def prepare(args):
    """sample.py's Prepared, from its parsed flags. Raises UsageError for a model that is not there, a
    prompt or a --length that does not fit n_ctx, a --window_shift outside 1 to n_ctx - 1, and prompt
    files that cannot be read as text or hold no prompt."""
    files = check_model_flags(args)
    n_ctx = files.hparams.n_ctx
    shift = None
    if args.sliding_window:
        shift = n_ctx // 2 if args.window_shift is None else args.window_shift
        if not 0 < shift < n_ctx:
            raise UsageError(f"--window_shift {shift} must be 1 to n_ctx - 1 = {n_ctx - 1}")
    enc = files.encoder()
    texts = [] if args.interactive else read_texts(args)
    length = args.length or (n_ctx if not (args.interactive or any(texts)) else n_ctx // 2)
    if args.interactive:
        fit(enc, "", length, n_ctx, shift, False)  # the --length alone must fit
    prompts = [fit(enc, text, length, n_ctx, shift, args.truncate_prompt, args.prefix) for text in texts]
    hp = files.hparams
    jobs = len(texts or [""]) * args.nsamples if args.nsamples else args.batch_size
    rows = min(args.batch_size, jobs)  # rows drawn together: each holds keys and values of n_ctx positions
    check_fits(rows * hp.n_layer * 2 * n_ctx * hp.n_embd * (2 if args.dtype else 4),
               f"--batch_size {args.batch_size}: the decoding cache of {rows} rows")
    return Prepared(files=files, enc=enc, texts=texts, prompts=prompts, length=length, shift=shift)


def read_texts(args):
    """The prompt texts the flags give: [--prompt], [the --prompt_file's text], the --prompts file's
    prompts, or [""] (unconditional samples)."""
    if args.prompts:
        texts = read_prompts(args.prompts, args.encoding, args.errors)
        if not texts:
            raise UsageError(f"--prompts {args.prompts} holds no prompts (only blank lines)")
        return texts
    if args.prompt_file:
        return [read_file(args.prompt_file, args.encoding, args.errors)]
    return [args.prompt or ""]


def read_file(path, encoding="utf-8", errors="strict"):
    """The text of a prompt file; UsageError naming the file when it is not text in `encoding`."""
    try:
        return "".join(read_text(path, encoding, errors, lambda _: None))
    except DatasetError as e:
        raise UsageError(str(e)) from None


def read_prompts(path, encoding="utf-8", errors="strict"):
    """The prompts of a --prompts file: one per line (blank lines skipped), or in a .jsonl file one JSON
    object {"prompt": text} per line, for prompts that hold newlines."""
    lines = read_file(path, encoding, errors).splitlines()
    if not path.endswith(".jsonl"):
        return [line for line in lines if line.strip()]
    prompts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UsageError(f"{path} line {number} is not JSON ({e.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            raise UsageError(f'{path} line {number}: expected an object with a "prompt" string')
        prompts.append(record["prompt"])
    return prompts


def fit(enc, text, length, n_ctx, shift=None, truncate=False, prefix="none"):
    """The tokens of prompt `text` (after the document token with prefix "eot"), checked against the
    model's n_ctx positions: without a window shift, the prompt (or the one start token of an
    unconditional sample) and the `length` new tokens take at most n_ctx + 1 tokens (the last one
    drawn is never fed back); with one, the prompt takes at most n_ctx. A prompt that does not fit is
    cut from the left with `truncate` (with a warning; the document token stays), else refused
    (UsageError)."""
    head = prefixed(enc, prefix, []) if text else []
    tokens = head + enc.encode(text)
    if shift is None and length > n_ctx:
        raise UsageError(f"Can't get samples longer than window size: {n_ctx} (--length {length}; "
                         "--sliding_window goes on past it)")
    limit = n_ctx if shift else n_ctx + 1 - length
    if len(tokens) <= limit:
        return tokens
    if not truncate:
        if shift:
            raise UsageError(f"the prompt has {len(tokens)} tokens, more than n_ctx = {n_ctx}; shorten it "
                             "or pass --truncate_prompt")
        raise UsageError(f"the prompt has {len(tokens)} tokens and --length {length} are to be generated: "
                         f"together at most n_ctx + 1 = {n_ctx + 1} (the last token drawn is not fed back); "
                         "shorten the prompt, lower --length, or pass --truncate_prompt or --sliding_window")
    print(f"warning: prompt cut from {len(tokens)} to its last {limit} tokens", file=sys.stderr)
    return head + tokens[len(tokens) - limit + len(head):]
