#!/usr/bin/env python3
"""Generate text with GPT-2: unconditional samples, a prompt, or the interactive prompt loop.

    python sample.py --top_p 0.9
    python sample.py --prompt "In a shocking finding," --length 100 --top_k 40
    python sample.py --interactive --run_name run1
"""

import argparse
import os
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Generate text with GPT-2.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model_name", default="124M", help="model folder inside models_dir")
    p.add_argument("--models_dir", default="models", help="folder of downloaded models")
    p.add_argument("--run_name", default=None, help="sample from checkpoint_dir/run_name (fine-tuned)")
    p.add_argument("--checkpoint_dir", default="checkpoint", help="folder of training runs")
    p.add_argument("--seed", type=int, default=None, help="random seed; same seed, same samples")
    p.add_argument("--nsamples", type=int, default=1, help="samples per prompt; 0: for ever (no prompt)")
    p.add_argument("--batch_size", type=int, default=1, help="samples drawn together")
    p.add_argument("--length", type=int, default=None,
                   help="tokens per sample (default: n_ctx without a prompt, n_ctx // 2 with one)")
    p.add_argument("--temperature", type=float, default=1.0, help="0 means greedy")
    p.add_argument("--top_k", type=int, default=0, help="keep the k most likely tokens; 0: all")
    p.add_argument("--top_p", type=float, default=1.0,
                   help="nucleus: keep the most likely tokens up to this probability; 1: all")
    p.add_argument("--prompt", default=None, help="text to continue")
    p.add_argument("--prompt_file", default=None, help="file whose text (UTF-8) to continue")
    p.add_argument("--interactive", action="store_true", help="ask for prompts in a loop")
    p.add_argument("--include_prompt", action="store_true", help="print the prompt before each sample")
    p.add_argument("--stop", action="append", metavar="TEXT", help="end a sample at this text (repeatable)")
    p.add_argument("--truncate_prompt", action="store_true",
                   help="cut a too-long prompt from the left instead of refusing it")
    p.add_argument("--output", default=None, metavar="FILE", help="write the samples to FILE (UTF-8)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="weights and cache precision (bfloat16: faster on CPUs that have it)")
    p.add_argument("--compile", choices=["auto", "xla", "graph"], default="auto",
                   help="compile the decoding loop with XLA or as a TensorFlow graph (auto: per device)")
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.nsamples < 0 or (args.length is not None and args.length < 1):
        p.error("--batch_size and --length must be at least 1, --nsamples at least 0")
    if args.nsamples == 0 and (args.prompt or args.prompt_file or args.interactive):
        p.error("--nsamples 0 (for ever) is for unconditional samples only")
    if args.prompt is not None and args.prompt_file is not None:
        p.error("give --prompt or --prompt_file, not both")
    args.compile = {"auto": None, "xla": True, "graph": False}[args.compile]
    args.dtype = None if args.dtype == "float32" else args.dtype
    return args


def main(argv=None):
    args = parse_args(argv)
    from gpt2_tf.checkpoint import CheckpointError
    from gpt2_tf.generate import run

    sys.stdout.reconfigure(errors="replace")  # a console that cannot show a character shows '?'
    try:
        if args.output:
            # Written under a temporary name and renamed when done (or interrupted), never half-replaced.
            tmp = args.output + ".tmp"
            try:
                with open(tmp, "w", encoding="utf-8") as out:
                    run(args, out)
            finally:
                if os.path.exists(tmp):
                    os.replace(tmp, args.output)
        else:
            run(args)
    except (CheckpointError, ValueError, OSError) as e:
        sys.exit(f"sample.py: error: {e}")
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
