#!/usr/bin/env python3
"""Download a released GPT-2 model into models/<name>/, e.g. `python download_model.py 124M`."""

import argparse

from gpt2_tf.cli import run_or_exit
from gpt2_tf.download import DEFAULT_BASE_URL, DownloadError, download_model


def main():
    parser = argparse.ArgumentParser(
        description="Download a released GPT-2 model and check it. An interrupted download resumes "
                    "when run again.")
    parser.add_argument("model_name", help="124M, 355M, 774M or 1558M (old names 117M and 345M accepted)")
    parser.add_argument("--models_dir", default="models",
                        help="folder of the model folders (default: models)")
    parser.add_argument("--base_url", default=None,
                        help=f"where the model folders are served (default: $GPT2_BASE_URL, else "
                             f"{DEFAULT_BASE_URL})")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or notes")
    args = parser.parse_args()
    run_or_exit(parser, (DownloadError, OSError), "run again to resume",
                download_model, args.model_name, args.models_dir, args.base_url, quiet=args.quiet)


if __name__ == "__main__":
    main()
