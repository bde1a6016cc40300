#!/usr/bin/env python3
"""Learn a byte-level BPE vocabulary of one's own, e.g. `python train_bpe.py corpus/ --vocab_size 32000
--out models/mine`.

The folder gets encoder.json and vocab.bpe in GPT-2's formats, and an hparams.json, so that encode.py,
train.py and sample.py use the new vocabulary with `--model_name mine` (train.py starting from scratch).

The command is gpt2_tf/cli/train_bpe.py.
"""

from gpt2_tf.cli.train_bpe import main

if __name__ == "__main__":
    main()
