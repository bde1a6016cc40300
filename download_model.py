#!/usr/bin/env python3
"""Download a released GPT-2 model into models/<name>/, e.g. `python download_model.py 124M`.

The command is gpt2_tf/cli/download.py.
"""

from gpt2_tf.cli.download import main

if __name__ == "__main__":
    main()
