#!/usr/bin/env python3
"""Fine-tune GPT-2 on your own text: the nshepperd trainer's flags and files, on TensorFlow 2.

    python train.py --dataset data.npz                      # 124M, until Ctrl-C (which saves)
    python train.py --dataset corpus/ --run_name poems --sample_every 500 --steps 5000
    python train.py --dataset data.npz --model_name 1558M --memory_saving_gradients --optimizer sgd

Checkpoints go to checkpoint/<run_name>/model-<step>, samples to samples/<run_name>/samples-<step>;
--restore_from latest (the default) continues a run exactly where it stopped. See docs/train.md.

The command is gpt2_tf/cli/train.py.
"""

from gpt2_tf.cli.train import main, make_parser, parse_args  # noqa: F401  (for callers from Python)

if __name__ == "__main__":
    main()
