#!/usr/bin/env python3
"""Generate text with GPT-2: unconditional samples, a prompt, or the interactive prompt loop.

    python sample.py --top_p 0.9
    python sample.py --prompt "In a shocking finding," --length 100 --top_k 40
    python sample.py --interactive --run_name run1
    python sample.py --prompts prompts.txt --batch_size 8 --output_format jsonl --output samples.jsonl
    python sample.py --prompt "Once upon a time" --length 3000 --sliding_window

The command is gpt2_tf/cli/sample.py.
"""

from gpt2_tf.cli.sample import main, parse_args  # noqa: F401  (parse_args: for callers from Python)

if __name__ == "__main__":
    main()
