#!/usr/bin/env python3
"""Watch GPT-2 make up its mind, layer by layer: the logit lens of a prompt.

    python lens.py --prompt " 1, 1, 1," --generate 1
    python lens.py --prompt "The keys to the cabinet" --watch " is" " are" --html lens.html
    python lens.py --run_name run1 --prompt "Once upon a time" --generate 10 --png lens.png

The command is gpt2_tf/cli/lens.py.
"""

from gpt2_tf.cli.lens import main

if __name__ == "__main__":
    main()
