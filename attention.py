#!/usr/bin/env python3
"""Where GPT-2 looks: the attention weights of every layer and head for a prompt.

    python attention.py --prompt "The keys to the cabinet are" --png attention.png
    python attention.py --prompt "The keys to the cabinet are" --html attention.html --layer 5 --head 1
    python attention.py --run_name run1 --prompt "Once upon a time" --json attention.json

The command is gpt2_tf/cli/attention.py.
"""

from gpt2_tf.cli.attention import main

if __name__ == "__main__":
    main()
