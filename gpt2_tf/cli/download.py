"""download_model.py: download a released model and check it, resumably. The flags and their
checks, then `fetch`, the work. This module does not import TensorFlow.
"""

import os
import sys
import urllib.parse

from gpt2_tf.cli import Parser, UsageError, check_folder_or_new, run_script
from gpt2_tf.download import DEFAULT_BASE_URL, DownloadError, check_model_name, download_model


def make_parser():
    parser = Parser(
        description="Download a released GPT-2 model and check it. An interrupted download resumes "
                    "when run again.")
    parser.add_argument("model_name", help="124M, 355M, 774M or 1558M (old names 117M and 345M accepted)")
    parser.add_argument("--models_dir", default="models", help="folder of the model folders")
    parser.add_argument("--base_url", default=None,
                        help=f"where the model folders are served, an http(s):// URL (default: "
                             f"$GPT2_BASE_URL, else {DEFAULT_BASE_URL})")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or notes")
    parser.add_verbose("say where the model is fetched from, and when it is checked")
    return parser


def check_base_url(url, where):
    """Raise UsageError unless `url` is an http:// or https:// URL; `where` names its source."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme in ("http", "https") and parts.netloc:
        return
    raise UsageError(f"{where} {url!r} is not an http:// or https:// URL")


def check_command(args):
    """Check the model name, --models_dir and the base URL; returns (name, base URL).

    Raises UsageError for an unknown name, a models folder that cannot be, or a URL that is not one.
    """
    try:
        name = check_model_name(args.model_name)
    except DownloadError as e:
        raise UsageError(str(e)) from None
    models_dir = os.path.expanduser(os.path.expandvars(args.models_dir))
    check_folder_or_new(models_dir, "--models_dir")
    check_folder_or_new(os.path.join(models_dir, name), "the model folder")
    if args.base_url is not None:
        check_base_url(args.base_url, "--base_url")
        return name, args.base_url
    if os.environ.get("GPT2_BASE_URL"):
        check_base_url(os.environ["GPT2_BASE_URL"], "GPT2_BASE_URL")
        return name, os.environ["GPT2_BASE_URL"]
    return name, DEFAULT_BASE_URL


def fetch(args, checked):
    """What download_model.py does once its flags are checked."""
    name, base_url = checked
    if args.verbose:
        print(f"Downloading {name} from {base_url.rstrip('/')}/{name}/", file=sys.stderr)
    path = download_model(args.model_name, args.models_dir, base_url, quiet=args.quiet)
    if args.verbose:
        print(f"{path}: complete and checked", file=sys.stderr)


def main(argv=None):
    run_script("download_model.py", make_parser, check_command, fetch, (DownloadError,),
               "run again to resume", argv, tensorflow=False)
