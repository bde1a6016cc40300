"""What the command-line scripts share: turning failures into the one-line errors users see.
This module does not import TensorFlow."""


def run_or_exit(parser, errors, interrupted, work, *args, **kwargs):
    """Return work(*args, **kwargs); on one of `errors` exit 1 with `<prog>: error: <message>` on one
    line, and on Ctrl-C exit 130 with `<prog>: interrupted; <interrupted>`."""
    try:
        return work(*args, **kwargs)
    except KeyboardInterrupt:
        parser.exit(130, f"{parser.prog}: interrupted; {interrupted}\n")
    except errors as e:
        parser.exit(1, f"{parser.prog}: error: {' '.join(str(e).split())}\n")
