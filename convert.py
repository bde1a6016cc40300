#!/usr/bin/env python3
"""Move a GPT-2 model between TF1 checkpoints (this project, OpenAI), Hugging Face and KerasHub.

    python convert.py gpt2-hf models/gpt2-hf                  # a Hugging Face folder -> a model folder here
    python convert.py models/124M gpt2-hf --to hf             # -> transformers, the Hub
    python convert.py checkpoint/run1 run1-keras --to keras_hub
    python convert.py checkpoint/run1 models/run1 --to tf1    # a run's newest checkpoint as a model folder

The command is gpt2_tf/cli/convert.py.
"""

from gpt2_tf.cli.convert import main

if __name__ == "__main__":
    main()
