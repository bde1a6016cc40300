"""What the command-line scripts share: their parser, the checks of flag values, quiet TensorFlow, and
`run_script`, which runs a script and turns each way it can end into the exit status and one-line message
users see. This module does not import TensorFlow.

Exit statuses, the same for every script:

    0    done
    1    failed while working: a download, a damaged checkpoint, a write that failed (a full disk), a
         training run that diverged
    2    bad usage or bad input, found before any work where it can be: a flag value, a path, a model
         or run that is not there, a prompt that does not fit the model, an input file that is not
         text in --encoding or holds none
    130  interrupted by Ctrl-C (SIGINT); what was saved stays valid, and the message says what it is
    143  stopped by SIGTERM, the same way
    141  the reader of the output went away (`... | head`): nothing more is written, quietly
"""

import argparse
import contextlib
import logging
import math
import os
import re
import signal
import sys
import threading

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE
INT32_MAX = 2**31 - 1


def exit_status(signum):
    """The status of a run stopped by signal `signum`, as shells report it: 128 + the signal's number
    (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + int(signum)


EXIT_INTERRUPTED = exit_status(signal.SIGINT)


class UsageError(Exception):
    """The command as given cannot run: reported as `<prog>: error: <message>`, exit status 2."""


class Interrupted(Exception):
    """The work stopped at a signal after keeping what it had done. Reported as `<prog>: <message>`,
    with the signal's exit status."""

    def __init__(self, message, signum=signal.SIGINT):
        super().__init__(message)
        self.signum = signum


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default once: not when its help already says it, nor when there is none."""

    def _get_help_string(self, action):
        help_text = action.help or ""
        no_default = any(action.default is nothing for nothing in (None, False, argparse.SUPPRESS))
        if no_default or "default" in help_text:
            return help_text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, `<prog>: error: <message>`, with exit status 2."""

    def __init__(self, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(**kwargs)

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")

    def add_verbose(self, help="also show TensorFlow's own log lines"):
        self.add_argument("--verbose", action="store_true", help=help)


class _DefaultStr(str):
    pass


class _DefaultInt(int):
    pass


class _DefaultFloat(float):
    pass


def default(value):
    """A flag's default value, marked so that `is_given` tells it from the same value given on the
    command line (it equals and prints as the value itself)."""
    return {str: _DefaultStr, int: _DefaultInt, float: _DefaultFloat}[type(value)](value)


def is_given(value):
    """Whether a flag's value was given on the command line (not None and not a `default`)."""
    return value is not None and not isinstance(value, (_DefaultStr, _DefaultInt, _DefaultFloat))


def integer(low=None, high=INT32_MAX):
    """An argparse type: an integer from `low` to `high` (by default at most 2**31 - 1, the largest
    count TensorFlow's int32 tensors hold)."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if low is not None and value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high}, got {value}")
        return value

    return parse


def number(low=None, high=None, above=None, below=None):
    """An argparse type: a finite float within the bounds (low <= x <= high, above < x < below)."""

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        checks = ((low, lambda b: value >= b, "at least"), (high, lambda b: value <= b, "at most"),
                  (above, lambda b: value > b, "more than"), (below, lambda b: value < b, "less than"))
        for bound, ok, words in checks:
            if bound is not None and not ok(bound):
                raise argparse.ArgumentTypeError(f"must be {words} {bound:g}, got {text}")
        return value

    return parse


def check_output_file(path, flag="the output", inputs=()):
    """Raise UsageError unless a file can be written at `path` (`-` is standard output): its folder
    exists and can be written in, it is not a folder, and it is none of `inputs`."""
    from gpt2_tf.files import write_problem

    problem = write_problem(path)
    if problem:
        raise UsageError(f"{flag}: {problem}")
    for name in inputs:
        if os.path.exists(name) and os.path.exists(path) and os.path.samefile(name, path):
            raise UsageError(f"{flag} {path} is also an input; give another output file")


def add_view_flags(parser, json_help, html_help, png_help):
    """A view's output flags (lens.py, attention.py): --json, --html and --png FILE, and --quiet."""
    parser.add_argument("--json", metavar="FILE", help=json_help)
    parser.add_argument("--html", metavar="FILE", help=html_help)
    parser.add_argument("--png", metavar="FILE", help=png_help + " (needs matplotlib)")
    parser.add_argument("--quiet", action="store_true", help="print no table (write only the files)")


def check_view_files(args):
    """The output files of a view (lens.py, attention.py): --json, --html and --png can be written, and
    --png has matplotlib. Raises UsageError."""
    for flag in ("json", "html", "png"):
        if getattr(args, flag):
            check_output_file(getattr(args, flag), f"--{flag}")
    if args.png:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError("--png needs matplotlib: pip install matplotlib (or use --html)") from None


def tables_stream(args):
    """Where a view's tables go: stdout, or stderr when one of its --json, --html, --png files is
    standard output."""
    from gpt2_tf.files import is_stdout

    written = (getattr(args, flag) for flag in ("json", "html", "png"))
    return sys.stderr if any(path and is_stdout(path) for path in written) else sys.stdout


def check_folder_or_new(path, flag):
    """Raise UsageError when no folder can be written at `path`: it, or a folder above it, is a file,
    or the nearest folder that exists cannot be written in. A folder that does not exist yet is fine
    (it will be created)."""
    from gpt2_tf.files import folder_problem

    problem = folder_problem(path)
    if problem:
        raise UsageError(f"{flag} {path}: {problem}" if not problem.startswith(path) else f"{flag} {problem}")


def input_files(inputs, encoding, verbose=False):
    """The files of a script's inputs (files, folders, glob patterns): (files, how many were skipped as
    not text). A missing input is a UsageError; with `verbose`, each skipped file is named on stderr."""
    from gpt2_tf.dataset import DatasetError, list_inputs
    from gpt2_tf.token_files import is_token_file

    skipped = []
    try:
        files = list_inputs(inputs, encoding, skipped)
    except DatasetError as e:
        raise UsageError(str(e)) from None
    if verbose:
        for path in skipped:
            reason = "not the token file its name says" if is_token_file(path) else \
                "not text (it holds NUL bytes)"
            print(f"skipped {path}: {reason}", file=sys.stderr)
    return files, skipped


def add_text_flags(parser, what="of the input files"):
    """--encoding and --errors, for scripts that read text files (args.encoding, args.errors)."""
    parser.add_argument("--encoding", type=str, default="utf-8", help=f"text encoding {what}")
    parser.add_argument("--errors", choices=["strict", "replace"], default="strict",
                        help="what to do with bytes that are not valid in --encoding: stop with an error, "
                             "or replace them with U+FFFD")


def add_document_flags(parser):
    """--line_by_line and the flags of .csv and .jsonl files (documents.py), for scripts that read
    training text; `text_format(args)` gives them as a documents.TextFormat."""
    from gpt2_tf.documents import STARTOFTEXT
    from gpt2_tf.encoder import ENDOFTEXT

    group = parser.add_argument_group("documents", "how text files are cut into documents: .csv files by "
                                      "rows, .jsonl files by records, plain text whole or by lines")
    group.add_argument("--line_by_line", action="store_true",
                       help="each line of a plain text file that is not blank is a document (documents are "
                            "separated by <|endoftext|>)")
    group.add_argument("--csv_column", metavar="COLUMN", default="0",
                       help=".csv files: the column holding the texts, by its name in the header or its "
                            "number counting from 0 (default 0, the first, as gpt-2-simple reads)")
    group.add_argument("--csv_no_header", action="store_true",
                       help=".csv files: the first row holds a text (default: it is a header, skipped)")
    group.add_argument("--start_token", metavar="TEXT", default=STARTOFTEXT,
                       help=f".csv files: text put before each row's text (default {STARTOFTEXT}, as "
                            "gpt-2-simple; '' for none)")
    group.add_argument("--end_token", metavar="TEXT", default=ENDOFTEXT,
                       help=f".csv files: text put after each row's text (default {ENDOFTEXT}, the token; '' "
                            "for none)")
    group.add_argument("--json_field", metavar="NAME", default="text",
                       help=".jsonl files: the field of each record that holds its text")


def text_format(args):
    """The documents.TextFormat of add_document_flags' flags."""
    from gpt2_tf.documents import TextFormat

    return TextFormat(line_by_line=args.line_by_line, column=args.csv_column, header=not args.csv_no_header,
                      start=args.start_token, end=args.end_token, field=args.json_field)


# The keys of a run's held_out.json and their types.
HELD_OUT_KEYS = {"dataset": str, "val_split": (int, float), "val_split_seed": int, "documents": int,
                 "held_out": list, "text_format": dict, "encoding": str, "errors": str, "bin_dtype": str}


def read_held_out(run_dir):
    """The held_out.json of a run (what train.py --val_split held out: train_loop.held_out_split says
    its keys), or None when the run has none. A file that cannot be read or is not such a record is a
    UsageError naming it."""
    import json

    from gpt2_tf.documents import HELD_OUT_FILE

    path = os.path.join(run_dir, HELD_OUT_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            split = json.load(f)
        wrong = [key for key, kind in HELD_OUT_KEYS.items()
                 if not isinstance(split, dict) or not isinstance(split.get(key), kind)]
        if wrong:
            raise ValueError(f"not the record train.py --val_split writes (no valid {wrong[0]!r})")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as e:
        raise UsageError(f"cannot read {path}: {describe(e)}") from None
    return split


def add_bin_dtype_flag(parser):
    """--bin_dtype, for scripts that read token files (args.bin_dtype)."""
    from gpt2_tf.token_files import BIN_DTYPES

    parser.add_argument("--bin_dtype", choices=BIN_DTYPES, default="uint16",
                        help="the type of the token ids in .bin files (nanoGPT's flat files are uint16)")


def available_memory():
    """Bytes of memory available to a new process (Linux's MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_fits(needed, what):
    """Raise UsageError when `needed` bytes, which `what` (flags and their values, in words) takes at
    the least, are more than the machine's memory: a value too large to be used."""
    available = available_memory()
    if available is not None and needed > available:
        gib = 1 << 30
        raise UsageError(f"{what}: at least {needed / gib:,.1f} GiB of memory, more than the "
                         f"{available / gib:.1f} GiB available; give smaller values")


def check_encoding(encoding):
    """Raise UsageError for a name that is not a text encoding Python knows."""
    from gpt2_tf.dataset import DatasetError, check_decoding

    try:
        check_decoding(encoding, "strict")
    except DatasetError as e:
        raise UsageError(str(e)) from None


def run_script(script, make_parser, check, work, errors=(), interrupted="nothing was written", argv=None,
               intermixed=False, tensorflow=True, bad_input=()):
    """Run a script: parse and check its flags, then `work(args, check(args))`; exits with the status
    of how it ended (see the table above), with one line on stderr for anything but success.

    `script`: the script's file name, used in messages when called from Python (as a program, the
    name it was run by). `check(args)` raises UsageError for bad usage, before TensorFlow is imported.
    `tensorflow` (a bool, or a function of args): whether the work needs TensorFlow, which is then
    imported before the work starts, so that Ctrl-C during the import is an interruption like any
    other. One of `errors` raised by the work exits 1, one of `bad_input` (an input file that is not
    what it should be, found while reading it) exits 2; `interrupted` says what Ctrl-C leaves.
    Returns what `work` returned (for callers from Python).
    """
    parser = make_parser()
    parser.prog = os.path.basename(sys.argv[0]) if argv is None else script
    with _interruptible_start(parser.prog):
        args = parser.parse_intermixed_args(argv) if intermixed else parser.parse_args(argv)
        try:
            checked = check(args)
        except (UsageError, *bad_input) as e:
            parser.error(" ".join(str(e).split()))
        except errors as e:  # a damaged file found by the checks
            parser.exit(EXIT_FAILED, f"{parser.prog}: error: {' '.join(describe(e).split())}\n")
        if argv is None:  # run as a program: keep TensorFlow's log lines away unless --verbose
            quiet_tensorflow(getattr(args, "verbose", False))
        if tensorflow(args) if callable(tensorflow) else tensorflow:
            import tensorflow  # noqa: F401  (here, where Ctrl-C exits at once)
    from gpt2_tf.files import WriteError

    def fail(status, message):
        parser.exit(status, f"{parser.prog}: {' '.join(str(message).split())}\n")

    try:
        return work(args, checked)
    except KeyboardInterrupt:
        fail(EXIT_INTERRUPTED, f"interrupted; {interrupted}")
    except Interrupted as e:
        fail(exit_status(e.signum), e)
    except (UsageError, *bad_input) as e:
        fail(EXIT_USAGE, f"error: {e}")
    except BrokenPipeError:
        _silence_stdout()
        sys.exit(EXIT_BROKEN_PIPE)
    except (WriteError, MemoryError, *errors) as e:
        fail(EXIT_FAILED, f"error: {describe(e)}")
    except Exception as e:
        if not type(e).__module__.startswith("tensorflow") or not hasattr(e, "message"):
            raise
        fail(EXIT_FAILED, f"error: {describe(e)}")


def describe(error):
    """An exception as the one line users see: an OSError as `<file>: <reason>`, a TensorFlow error as
    its reason alone."""
    if isinstance(error, MemoryError):
        return "out of memory"
    if type(error).__module__.startswith("tensorflow") and hasattr(error, "message"):
        return tensorflow_error(error)
    if isinstance(error, OSError) and error.strerror and type(error).__str__ is OSError.__str__:
        return f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    return " ".join(str(error).split())


def tensorflow_error(error):
    """The first line of a TensorFlow error's message, without its graph and op annotations, and for
    a failed file operation ("<file>; <reason>") the reason alone: the file is a temporary one."""
    lines = error.message.strip().splitlines()
    text = re.sub(r"\{\{[^}]*\}\}|\[Op:\w+\]", "", lines[0] if lines else "").strip()
    text = text.rsplit("; ", 1)[-1].strip() or type(error).__name__
    if type(error).__name__ == "ResourceExhaustedError" and "space" not in text:
        return f"out of memory: {text}"
    return text


@contextlib.contextmanager
def _interruptible_start(prog):
    """Until the work starts (parsing, checks, importing TensorFlow), Ctrl-C ends the process at once
    with one line and status 130: there is nothing to keep yet, and a KeyboardInterrupt raised inside
    TensorFlow's initialisation would become a long traceback or an ImportError."""

    def stop(signum, frame):
        sys.stdout.flush()
        os.write(sys.stderr.fileno(), f"\n{prog}: interrupted; nothing was done\n".encode())
        os._exit(exit_status(signum))

    try:
        previous = signal.signal(signal.SIGINT, stop)
    except ValueError:  # not in the main thread: leave signals as they are
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _silence_stdout():
    """After a broken pipe, point standard output at /dev/null, so that Python's final flush at exit
    writes nowhere instead of printing an error."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


# ---------------------------------------------------------------------------------------------------
# Quiet TensorFlow.

# A line of TensorFlow's, XLA's or absl's C++ logging: "I0000 00:00:1796018194.763036    2100 file.cc:31] ..."
# (absl), "2024-01-01 12:00:00.000000: W tensorflow/file.cc:31] ..." (older TensorFlow), and the lines
# that come with them. Fatal lines ("F...") are kept: they explain a crash.
TF_LOG_LINE = re.compile(
    rb"[IWE]\d{4} \d\d:\d\d:[\d.]+ +\d+ [\w.\-/]+:\d+\]"
    rb"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWE] [\w.\-/]+:\d+\]"
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags"
    rb"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\."  # LiteRT's, on loading a model
)

# The log lines that are let through all the same: a GPU that TensorFlow found but cannot use (CUDA or
# cuDNN libraries missing) would otherwise make a run fall back to the CPU in silence.
TF_LOG_KEPT = re.compile(rb"Cannot dlopen some GPU libraries|Skipping registering GPU devices")

_quiet = False


def quiet_tensorflow(verbose=False):
    """Keep TensorFlow's own C++ log lines off the terminal, unless `verbose` or TF_CPP_MIN_LOG_LEVEL=0
    (a level that asks for every line; then TensorFlow logs as it always does). Call before importing
    TensorFlow.

    Those lines are written straight to file descriptor 2 by C++ code, some before any setting can
    take effect. So file descriptor 2 becomes a pipe, read by a thread that passes on every other
    line; Python's sys.stderr (our own messages, progress bars, tracebacks) keeps the real stderr.
    TensorFlow's Python logger is set to show errors only.
    """
    global _quiet
    if _quiet or verbose or os.environ.get("TF_CPP_MIN_LOG_LEVEL", "").strip() == "0":
        return
    _quiet = True
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    sys.stderr.flush()
    terminal = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    sys.stderr = open(terminal, "w", encoding=sys.stderr.encoding, errors="backslashreplace",
                      buffering=1, closefd=False)
    threading.Thread(target=_pass_on, args=(read_end, terminal), daemon=True).start()


def _pass_on(read_end, terminal):
    """Copy the lines from the pipe to the terminal, all but TensorFlow's log lines."""
    pending = b""
    while True:
        data = os.read(read_end, 1 << 16)
        if not data:
            break
        *lines, pending = (pending + data).split(b"\n")
        for line in lines:
            if not TF_LOG_LINE.match(line) or TF_LOG_KEPT.search(line):
                os.write(terminal, line + b"\n")
    if pending and (not TF_LOG_LINE.match(pending) or TF_LOG_KEPT.search(pending)):
        os.write(terminal, pending)
