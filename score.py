#!/usr/bin/env python3
"""How good is a model on some text: loss, perplexity, bits per byte, word perplexity, accuracy.

    python score.py heldout.txt
    python score.py heldout.txt --run_name run1            # the same text, a fine-tuned checkpoint
    python score.py lines.txt --per_line --json scores.json
    python score.py wiki.test.raw --model_name 774M --compat hf --stride 512

The command is gpt2_tf/cli/score.py.
"""

from gpt2_tf.cli.score import main

if __name__ == "__main__":
    main()
