#!/usr/bin/env python3
"""Pre-encode text files into a tokenized training set, e.g. `python encode.py corpus/ data.npz`.

The .npz file can be given to train.py --dataset instead of the text, which then starts at once.

The command is gpt2_tf/cli/encode.py.
"""

from gpt2_tf.cli.encode import main

if __name__ == "__main__":
    main()
