"""What the command-line scripts share: their parser, the checks of flag values, quiet TensorFlow, and
turning failures into the one-line errors users see. This module does not import TensorFlow.

Exit statuses, the same for every script: 0 done, 1 failed while working (a download, a damaged file,
a training run that diverged), 2 bad usage (a flag value, a path or a model that is not there; found
before any work starts), 130 interrupted (Ctrl-C).
"""

import argparse
import logging
import math
import os
import re
import sys
import threading

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """The command as given cannot run: reported as `<prog>: error: <message>`, exit status 2."""


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


def integer(low=None, high=None):
    """An argparse type: an integer from `low` to `high`."""

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
    """Raise UsageError unless a file can be written at `path`: its folder exists, it is not a folder,
    and it is none of `inputs`."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path} is a folder; give a file name")
    if not os.path.isdir(folder):
        raise UsageError(f"cannot write {path}: folder {os.path.dirname(path) or '.'} does not exist")
    for name in inputs:
        if os.path.exists(name) and os.path.exists(path) and os.path.samefile(name, path):
            raise UsageError(f"{flag} {path} is also an input; give another output file")


def check_folder_or_new(path, flag):
    """Raise UsageError when no folder can be at `path`: it, or a folder above it, is a file. A folder
    that does not exist yet is fine (it will be created)."""
    from gpt2_tf.files import blocking_file

    blocking = blocking_file(path)
    if blocking == os.path.abspath(path):
        raise UsageError(f"{flag} {path} is a file, not a folder")
    if blocking:
        raise UsageError(f"{flag} {path}: {blocking} is a file, not a folder")


def input_files(inputs, encoding, verbose=False):
    """The files of a script's inputs (files, folders, glob patterns): (files, how many were skipped as
    not text). A missing input is a UsageError; with `verbose`, each skipped file is named on stderr."""
    from gpt2_tf.dataset import DatasetError, list_inputs

    skipped = []
    try:
        files = list_inputs(inputs, encoding, skipped)
    except DatasetError as e:
        raise UsageError(str(e)) from None
    if verbose:
        for path in skipped:
            print(f"skipped {path}: not text (it holds NUL bytes)", file=sys.stderr)
    return files, skipped


def add_text_flags(parser):
    """--encoding and --errors, for scripts that read text files (args.encoding, args.errors)."""
    parser.add_argument("--encoding", type=str, default="utf-8", help="text encoding of the input files")
    parser.add_argument("--errors", choices=["strict", "replace"], default="strict",
                        help="what to do with bytes that are not valid in --encoding: stop with an error, "
                             "or replace them with U+FFFD")


def add_bin_dtype_flag(parser):
    """--bin_dtype, for scripts that read token files (args.bin_dtype)."""
    from gpt2_tf.token_files import BIN_DTYPES

    parser.add_argument("--bin_dtype", choices=BIN_DTYPES, default="uint16",
                        help="the type of the token ids in .bin files (nanoGPT's flat files are uint16)")


def check_encoding(encoding):
    """Raise UsageError for a name that is not a text encoding Python knows."""
    from gpt2_tf.dataset import DatasetError, check_decoding

    try:
        check_decoding(encoding, "strict")
    except DatasetError as e:
        raise UsageError(str(e)) from None


def start(parser, argv, check, intermixed=False):
    """(args, check(args)): the parsed flags, checked before any work. A UsageError from check is one
    line and exit status 2. When the script runs as a program (argv None, not called from Python),
    TensorFlow's log lines are kept away (`quiet_tensorflow`) unless --verbose."""
    args = parser.parse_intermixed_args(argv) if intermixed else parser.parse_args(argv)
    try:
        checked = check(args)
    except UsageError as e:
        parser.error(str(e))
    if argv is None:
        quiet_tensorflow(args.verbose)
    return args, checked


def run_or_exit(parser, errors, interrupted, work, *args, **kwargs):
    """Return work(*args, **kwargs), turning failures into one line on stderr and an exit status.

    UsageError exits 2 and one of `errors` exits 1, as `<prog>: error: <message>`; Ctrl-C exits 130
    with `<prog>: interrupted; <interrupted>`.
    """
    try:
        return work(*args, **kwargs)
    except KeyboardInterrupt:
        parser.exit(EXIT_INTERRUPTED, f"{parser.prog}: interrupted; {interrupted}\n")
    except UsageError as e:
        parser.exit(EXIT_USAGE, f"{parser.prog}: error: {' '.join(str(e).split())}\n")
    except errors as e:
        parser.exit(EXIT_FAILED, f"{parser.prog}: error: {' '.join(str(e).split())}\n")


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
)

_quiet = False


def quiet_tensorflow(verbose=False):
    """Keep TensorFlow's own C++ log lines off the terminal, unless `verbose` or the user set
    TF_CPP_MIN_LOG_LEVEL (then TensorFlow logs as it always does). Call before importing TensorFlow.

    Those lines are written straight to file descriptor 2 by C++ code, some before any setting can
    take effect. So file descriptor 2 becomes a pipe, read by a thread that passes on every other
    line; Python's sys.stderr (our own messages, progress bars, tracebacks) keeps the real stderr.
    TensorFlow's Python logger is set to show errors only.
    """
    global _quiet
    if _quiet or verbose or "TF_CPP_MIN_LOG_LEVEL" in os.environ:
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
            if not TF_LOG_LINE.match(line):
                os.write(terminal, line + b"\n")
    if pending and not TF_LOG_LINE.match(pending):
        os.write(terminal, pending)
