"""Benchmarks read from their published files: HellaSwag and LAMBADA, as lm-evaluation-harness defines them.

Each item of a task asks for the log-likelihood of one or more continuations after a context:
- **HellaSwag** (`hellaswag_val.jsonl`, one object per line with `activity_label`, `ctx_a`, `ctx_b`,
  `endings` and `label`): the context is preprocess(activity_label + ": " + ctx_a + " " +
  ctx_b.capitalize()), the four continuations " " + preprocess(ending). acc: the ending of the largest
  summed log-likelihood is the labelled one; acc_norm: the same with each log-likelihood divided by
  its ending's length in characters (without the space).
- **hellaswag_llmc**: HellaSwag as llm.c's dev/data/hellaswag.py scores it ("completion style"): the
  context is the record's own `ctx` (ctx_a + " " + ctx_b) and each continuation " " + ending, neither
  cleaned, tokenized apart and joined; acc_norm divides by the ending's number of tokens.
- **LAMBADA** (OpenAI's `lambada_test.jsonl`, one `{"text": ...}` per line): the text cut at its last
  space; the continuation is " " + the last word. acc: the greedy tokens are the word's tokens;
  ppl = exp(−mean log-likelihood of the word).

A context and its continuation are tokenized as lm-eval tokenizes them: trailing spaces of the context
move to the continuation, the continuation's tokens are those of encode(context + continuation) after
the first len(encode(context)), an empty context is <|endoftext|>, and a sequence longer than the
window keeps its last n_ctx + 1 tokens. Standard errors are those of a mean over items, sample
standard deviation / sqrt(n). Reading and the figures need no TensorFlow; `loglikelihoods` runs a
score.WindowScorer.
"""

import dataclasses
import json
import math
import re

import numpy as np

TASKS = ("hellaswag", "hellaswag_llmc", "lambada")


class TaskError(Exception):
    """A task file that cannot be read: the message names the file and the line."""


@dataclasses.dataclass
class Item:
    """One question: a context, its continuations (each scored after it) and the right one."""

    name: str  # FILE:LINE
    context: str
    continuations: list
    gold: int = 0
    lengths: list = None  # acc_norm's divisors, one per continuation (HellaSwag; None: its tokens)
    apart: bool = False  # context and continuation tokenized apart, not as one text (llm.c)


def multiple_choice(task):
    """Whether a task picks one of several continuations (and has acc_norm): HellaSwag's."""
    return task.startswith("hellaswag")


def preprocess(text):
    """HellaSwag's cleaning of a context or an ending (lm-eval's): strip, " [title]" -> ". ", other
    [tags] removed, double spaces made single."""
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def read_task(task, path):
    """The items of a task file (one JSON object per line, blank lines skipped). Raises TaskError."""
    make = {"hellaswag": _hellaswag_item, "hellaswag_llmc": _hellaswag_llmc_item,
            "lambada": _lambada_item}[task]
    items = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path} line {number}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise TaskError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(record, dict):
                    raise TaskError(f"{where}: expected a JSON object, as in the published {task} files")
                items.append(make(f"{path}:{number}", where, record))
    except UnicodeDecodeError as e:
        raise TaskError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise TaskError(f"cannot read {path}: {e.strerror or e}") from None
    if not items:
        raise TaskError(f"{path} holds no {task} items")
    return items


def _field(record, name, kind, where, task):
    value = record.get(name)
    if not isinstance(value, kind):
        raise TaskError(f'{where}: no "{name}" {kind.__name__} (is this a {task} file?)')
    return value


def _endings_and_label(where, record):
    endings = _field(record, "endings", list, where, "HellaSwag")
    label = record.get("label")
    if isinstance(label, str) and label.strip().isdigit():
        label = int(label)  # the Hugging Face copy writes it as a string
    if not endings or not all(isinstance(e, str) for e in endings):
        raise TaskError(f'{where}: "endings" must be a list of strings')
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(endings):
        raise TaskError(f'{where}: "label" must be the number of the right ending, 0 to {len(endings) - 1} '
                        "(the test split's labels are not published: use hellaswag_val.jsonl)")
    return endings, label


def _hellaswag_item(name, where, record):
    keys = ("activity_label", "ctx_a", "ctx_b")
    activity, ctx_a, ctx_b = (_field(record, key, str, where, "HellaSwag") for key in keys)
    endings, label = _endings_and_label(where, record)
    choices = [preprocess(ending) for ending in endings]
    return Item(name, preprocess(activity + ": " + ctx_a + " " + ctx_b.capitalize()),
                [" " + choice for choice in choices], label, [len(choice) for choice in choices])


def _hellaswag_llmc_item(name, where, record):
    endings, label = _endings_and_label(where, record)
    return Item(name, _field(record, "ctx", str, where, "HellaSwag"), [" " + e for e in endings], label,
                apart=True)


def _lambada_item(name, where, record):
    words = _field(record, "text", str, where, "LAMBADA").split(" ")
    if len(words) < 2:
        raise TaskError(f"{where}: the text has no space, so no last word to predict")
    return Item(name, " ".join(words[:-1]), [" " + words[-1]])


def request_tokens(encode, context, continuation, eot, apart=False):
    """(context ids, continuation ids) of one request, tokenized as lm-eval does (module docstring), or
    with `apart` each by itself, as llm.c does."""
    if apart:
        return list(encode(context)), list(encode(continuation))
    if not context:
        return [eot], list(encode(continuation))
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole, start = list(encode(context + continuation)), list(encode(context))
    return start, whole[len(start):]


def requests(items, encode, eot, n_ctx):
    """The token sequences to score, one per continuation of each item in turn: [(sequence [<= n_ctx +
    1] int32, number of continuation tokens at its end)]."""
    found = []
    for item in items:
        for continuation in item.continuations:
            start, tokens = request_tokens(encode, item.context, continuation, eot, item.apart)
            if not tokens:
                raise TaskError(f"{item.name}: the continuation {continuation!r} has no tokens")
            sequence = np.asarray(start + tokens, np.int32)[-(n_ctx + 1):]
            found.append((sequence, min(len(tokens), len(sequence) - 1)))
    return found


def loglikelihoods(scorer, found, progress=None):
    """(log-likelihood [N] float64, greedy [N] bool) of each request of `requests`: the sum of log p of
    its continuation tokens, and whether each of them has the largest logit. scorer: a
    score.WindowScorer."""
    from gpt2_tf.score import Window

    windows = [(sequence, Window(0, len(sequence) - count, len(sequence) - 1)) for sequence, count in found]
    total, greedy = np.zeros(len(found)), np.zeros(len(found), bool)
    for index, scores in scorer.run(windows, progress):
        total[index] = -scores["loss"].astype(np.float64).sum()
        greedy[index] = bool(scores["correct"].all())
    return total, greedy


def evaluate(scorer, task, items, found, progress=None):
    """The results of a task's items whose `requests` are `found`, scored by `scorer` (see results)."""
    total, greedy = loglikelihoods(scorer, found, progress)
    return results(task, items, total, greedy, [count for _, count in found])


def results(task, items, total, greedy, counts=None):
    """Each item's result from loglikelihoods' output (in the order of `requests`; counts: the number of
    continuation tokens of each, for acc_norm by tokens): {"name", "loglikelihoods": [float], "correct":
    0 or 1, and HellaSwag's "correct_norm"}."""
    at, each = 0, []
    for item in items:
        n = len(item.continuations)
        lls = total[at:at + n]
        result = {"name": item.name, "loglikelihoods": [float(ll) for ll in lls]}
        if multiple_choice(task):
            divisors = np.asarray(item.lengths if item.lengths is not None else counts[at:at + n], np.float64)
            result["correct"] = int(np.argmax(lls) == item.gold)
            result["correct_norm"] = int(np.argmax(lls / divisors) == item.gold)
        else:
            result["correct"] = int(greedy[at])
        each.append(result)
        at += n
    return each


def summary(task, each):
    """The figures of some items' results: {"items": n, "acc", "acc_stderr", and HellaSwag's "acc_norm",
    "acc_norm_stderr", or LAMBADA's "ppl"} (a standard error is None for one item)."""
    out = {"items": len(each), **_mean("acc", [r["correct"] for r in each])}
    if multiple_choice(task):
        out.update(_mean("acc_norm", [r["correct_norm"] for r in each]))
    else:
        out["ppl"] = math.exp(min(-float(np.mean([r["loglikelihoods"][0] for r in each])), 700))
    return out


def _mean(name, values):
    values = np.asarray(values, np.float64)
    stderr = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None
    return {name: float(values.mean()), f"{name}_stderr": stderr}
