"""score.py: how good a model is on some text, every token scored once with a sliding window. The
flags and their checks (made before TensorFlow is imported), then `run`, the work.
"""

import os
import sys

from tqdm import tqdm

from gpt2_tf.checkpoint_files import CheckpointError
from gpt2_tf.cli import (
    Parser,
    UsageError,
    add_bin_dtype_flag,
    add_document_flags,
    add_text_flags,
    check_encoding,
    check_fits,
    check_output_file,
    default,
    input_files,
    integer,
    is_given,
    read_held_out,
    run_script,
    text_format,
)
from gpt2_tf.cli.model_flags import add_model_flags, check_litert, check_model_flags
from gpt2_tf.files import is_stdout
from gpt2_tf.score_report import table, task_table, to_json, write_html, write_json, write_tsv
from gpt2_tf.tasks import TASKS, TaskError, read_task


def make_parser():
    p = Parser(description="Score text with GPT-2: every token once, with a sliding window.")
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="text files, folders, glob patterns, .npz files or nanoGPT's .bin files")
    p.add_argument("--task", choices=TASKS,
                   help="score the items of a benchmark, INPUT being its published file: hellaswag "
                        "(hellaswag_val.jsonl) or lambada (OpenAI's lambada_test.jsonl), as "
                        "lm-evaluation-harness defines them; hellaswag_llmc: HellaSwag as llm.c scores it "
                        "(docs/score.md)")
    p.add_argument("--held_out", metavar="RUN",
                   help="score the documents that train.py --val_split held out of the dataset of run RUN "
                        "(its checkpoint_dir/RUN/held_out.json), in place of INPUT")
    add_model_flags(p, "score the newest checkpoint of checkpoint_dir/run_name (fine-tuned)")
    p.add_argument("--context", type=integer(2), default=None, help="window length C (default: n_ctx)")
    p.add_argument("--stride", type=integer(1), default=None,
                   help="tokens newly scored per window S, 1 to C (default: C // 2)")
    p.add_argument("--prefix", choices=["eot", "none"], default=default("eot"),
                   help="eot: each document follows <|endoftext|> and all its tokens are scored; none: its "
                        "first token is context only")
    p.add_argument("--compat", choices=["hf"], default=None,
                   help="hf: score as Hugging Face's perplexity guide does (its windows, no prefix)")
    p.add_argument("--per_line", dest="line_by_line", action="store_true", help="the same as --line_by_line")
    p.add_argument("--show_documents", action="store_true",
                   help="print a row per document of a file (with --line_by_line, and of .csv and .jsonl "
                        "files), not only the total")
    p.add_argument("--batch_size", type=integer(1), default=8, help="windows scored together")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=default("float32"),
                   help="weights and activations (bfloat16: faster on CPUs that have it, less exact)")
    p.add_argument("--json", metavar="FILE", help="write the documents' sums and the totals as JSON")
    p.add_argument("--tsv", metavar="FILE", help="write one row per scored token")
    p.add_argument("--html", metavar="FILE", help="write a page of the text coloured by surprisal")
    add_text_flags(p)
    add_document_flags(p)
    add_bin_dtype_flag(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar and no table (write only the files)")
    p.add_verbose()
    return p


def check_args(args):
    """Check the flags, the model and the inputs before any work (TensorFlow is not imported yet);
    returns (input files, or with --task the items of its files; the model's files). Raises UsageError."""
    model = check_model_flags(args)
    check_encoding(args.encoding)
    n_ctx = model.hparams.n_ctx
    if args.context is not None and args.context > n_ctx:
        raise UsageError(f"--context {args.context} is more than the model's n_ctx = {n_ctx}")
    context = args.context or n_ctx
    if args.stride is not None and args.stride > context:
        raise UsageError(f"--stride {args.stride} is more than --context {context}; it must be 1 to "
                         f"{context}")
    if args.compat == "hf" and (args.tsv or args.html or args.line_by_line):
        raise UsageError("--compat hf gives Hugging Face's figure for whole files; --tsv, --html and "
                         "--line_by_line need the exact per-token scores: leave --compat out")
    check_fits(args.batch_size * context * model.hparams.n_vocab * 4,
               f"--batch_size {args.batch_size}: the logits of {args.batch_size} windows of {context} tokens")
    if args.task:
        files = check_task(args)
    else:
        files = check_inputs(args)
    if model.litert:
        check_litert(model)
        if not os.path.isfile(model.litert_scores):
            folder = os.path.dirname(model.litert_scores)
            raise UsageError(f"{folder} is a LiteRT model folder without score.tflite, the file score.py "
                             "runs: convert its model to LiteRT again with convert.py")
        if is_given(args.dtype):
            raise UsageError(f"--dtype is for TensorFlow models; {model.name} is a LiteRT model (its "
                             "weights' precision was chosen when convert.py wrote it)")
    args.dtype = None if args.dtype == "float32" else str(args.dtype)
    return files, model


def check_inputs(args):
    """The files to score (of INPUT, or of --held_out's run). Raises UsageError."""
    args.split = read_split(args) if args.held_out else None
    if not args.inputs:
        raise UsageError("nothing to score: name the INPUT files, or --held_out RUN")
    files, _ = input_files(args.inputs, args.encoding, args.verbose)
    if not files:
        raise UsageError("no input files found")
    for flag in ("json", "tsv", "html"):
        if getattr(args, flag):
            check_output_file(getattr(args, flag), f"--{flag}", files)
    return files


def check_task(args):
    """--task's flags and its files, read: returns {file: [tasks.Item]}. Raises UsageError."""
    unused = {"--held_out": args.held_out, "--stride": args.stride is not None, "--compat": args.compat,
              "--prefix": is_given(args.prefix), "--line_by_line": args.line_by_line,
              "--show_documents": args.show_documents, "--tsv": args.tsv, "--html": args.html}
    for flag, given in unused.items():
        if given:
            raise UsageError(f"{flag} is for scoring text; --task {args.task} scores each item as "
                             "lm-evaluation-harness does: leave it out")
    if not args.inputs:
        raise UsageError(f"--task {args.task}: name its file (see docs/score.md for where it is published)")
    if args.json:
        check_output_file(args.json, "--json", args.inputs)
    try:
        return {path: read_task(args.task, path) for path in args.inputs}
    except TaskError as e:
        raise UsageError(str(e)) from None


def read_split(args):
    """The held_out.json of run --held_out (train.py --val_split), its dataset made the input and its
    reading flags (encoding, .csv and .jsonl flags) those of this run. Raises UsageError."""
    from gpt2_tf.documents import HELD_OUT_FILE

    if args.inputs:
        raise UsageError(f"--held_out {args.held_out} names the documents to score; leave out INPUT "
                         f"({args.inputs[0]})")
    run_dir = os.path.join(args.checkpoint_dir, args.held_out)
    split = read_held_out(run_dir)
    if split is None:
        raise UsageError(f"--held_out {args.held_out}: {os.path.join(run_dir, HELD_OUT_FILE)} is not there "
                         "(train.py writes it when a run holds documents out; is --checkpoint_dir right?)")
    args.inputs = [split["dataset"]]
    args.encoding, args.errors, args.bin_dtype = split["encoding"], split["errors"], split["bin_dtype"]
    return split


def run_task(args, items, model, context, enc, out):
    """score.py --task: every item of the files of `items` ({file: [tasks.Item]}) scored together, the
    table printed to `out` and --json written. Returns the figures of all items."""
    from gpt2_tf.fast_encoder import fastest_encode
    from gpt2_tf.score import WindowScorer
    from gpt2_tf.tasks import evaluate, requests, summary

    everything = [item for file_items in items.values() for item in file_items]
    try:
        found = requests(everything, fastest_encode(enc), enc.eot_token, context)
    except TaskError as e:
        raise UsageError(str(e)) from None
    scorer = WindowScorer(model, context, args.batch_size)
    with tqdm(total=sum(count for _, count in found), unit="tok", desc=f"Scoring {args.task}",
              disable=args.quiet, dynamic_ncols=True) as bar:
        each = evaluate(scorer, args.task, everything, found, bar.update)
    rows, at = [], 0
    for path, file_items in items.items():
        rows.append((path, summary(args.task, each[at:at + len(file_items)])))
        at += len(file_items)
    total = summary(args.task, each)
    if not args.quiet:
        print("\n".join(task_table(args.task, rows, total if len(rows) > 1 else None)), file=out)
    if args.json:
        write_json(args.json, {"model": args.run_name or args.model_name, "task": args.task,
                               "context": context,
                               "files": [{"name": path, **figures} for path, figures in rows],
                               "total": total, "items": each})
    return total


def score(args, checked):
    """What score.py does once its flags are checked."""
    files, model = checked
    sys.stdout.reconfigure(errors="replace")  # a console that cannot show a character shows '?'
    return run(args, files, model=model)


def main(argv=None):
    from gpt2_tf.dataset import DatasetError

    return run_script("score.py", make_parser, check_args, score, (CheckpointError,), "nothing was written",
                      argv, intermixed=True, bad_input=(DatasetError,))




def run(args, files, out=None, model=None):
    """score.py: load the model (the ModelFiles `model`, else the one the flags name) and the documents
    of `files` (with --task, check_task's items), score them, print the table to `out` (default stdout;
    stderr when a file is written to standard output) and write the requested files. Returns the
    totals."""
    from gpt2_tf.devices import grow_gpu_memory
    from gpt2_tf.documents import Numbered, TextFormat, form
    from gpt2_tf.model_files import find_model, load
    from gpt2_tf.score import figures, load_documents, score_documents, totals

    outputs = [getattr(args, flag) for flag in ("json", "tsv", "html") if getattr(args, flag)]
    out = out or (sys.stderr if any(is_stdout(path) for path in outputs) else sys.stdout)
    model_files = model or find_model(args.model_name, args.models_dir, args.run_name, args.checkpoint_dir)
    if model_files.litert:
        model, hparams, enc = model_files.litert_scores, model_files.hparams, model_files.encoder()
    else:
        grow_gpu_memory()
        model, hparams, enc = load(model_files, dtype=args.dtype)
    context = args.context or hparams.n_ctx
    if args.task:
        return run_task(args, files, model, context, enc, out)
    stride = args.stride or context // 2
    split = getattr(args, "split", None)
    fmt = TextFormat(**split["text_format"]) if split else text_format(args)
    wanted = Numbered(split["held_out"], inside=True) if split else None
    documents = load_documents(enc, files, fmt, args.encoding, args.errors, hparams.n_vocab, args.bin_dtype,
                               wanted)
    if split and wanted.count != split["documents"]:
        raise UsageError(f"{split['dataset']} has changed since run {args.held_out} held documents out of "
                         f"it: it holds {wanted.count} documents, the run counted {split['documents']}")
    if args.prefix == "eot" and args.compat is None and enc.eot_token is None:
        raise UsageError("the vocabulary has no <|endoftext|> token: use --prefix none")
    prefix = "none" if args.compat == "hf" else args.prefix
    targets = sum(max(0, len(d.tokens) - (prefix == "none")) for d in documents)
    if not targets:
        raise UsageError("nothing to score: the input is empty (no tokens)"
                         + (" after the first of each document" if prefix == "none" else ""))
    details = bool(args.tsv or args.html)
    with tqdm(total=targets, unit="tok", desc="Scoring", disable=args.quiet, dynamic_ncols=True) as bar:
        scored = score_documents(model, documents, context, stride, args.prefix, args.compat,
                                 args.batch_size, details, bar.update, enc.eot_token)
    total = totals(scored)
    rows = [(s.document.name, {"tokens": s.tokens, "bytes": s.document.bytes, "words": s.document.words,
                               "nll": s.nll, "correct": s.correct,
                               **figures(s.tokens, s.nll, s.correct, s.document.bytes, s.document.words)})
            for s in scored]
    if not args.quiet:
        by_lines = any(form(path, fmt) != "text" for path in files)  # many documents: the total only
        shown = rows if (args.show_documents or not by_lines) else []
        print("\n".join(table(shown, total)), file=out)
        if total["bytes"] is None:
            print("(.npz input holds tokens only: bits per byte and word perplexity need the text)", file=out)
    if args.json:
        settings = {"model": args.run_name or args.model_name, "context": context, "stride": stride,
                    "prefix": prefix, "compat": args.compat}
        write_json(args.json, to_json(settings, rows, total))
    if args.tsv:
        write_tsv(args.tsv, scored, enc)
    if args.html:
        names = ", ".join(s.document.name for s in scored[:3]) + (", ..." if len(scored) > 3 else "")
        write_html(args.html, scored, enc, f"{args.run_name or args.model_name}: {names}")
    return total
