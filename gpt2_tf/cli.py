"""What the command-line scripts share: the text-reading flags, and turning failures into the
one-line errors users see. This module does not import TensorFlow."""


def add_text_flags(parser):
    """--encoding and --errors, for scripts that read text files (args.encoding, args.errors)."""
    parser.add_argument("--encoding", type=str, default="utf-8", help="text encoding of the input files")
    parser.add_argument("--errors", choices=["strict", "replace"], default="strict",
                        help="what to do with bytes that are not valid in --encoding: stop with an error, "
                             "or replace them with U+FFFD")


def run_or_exit(parser, errors, interrupted, work, *args, **kwargs):
    """Return work(*args, **kwargs); on one of `errors` exit 1 with `<prog>: error: <message>` on one
    line, and on Ctrl-C exit 130 with `<prog>: interrupted; <interrupted>`."""
    try:
        return work(*args, **kwargs)
    except KeyboardInterrupt:
        parser.exit(130, f"{parser.prog}: interrupted; {interrupted}\n")
    except errors as e:
        parser.exit(1, f"{parser.prog}: error: {' '.join(str(e).split())}\n")
