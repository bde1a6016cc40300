#!/usr/bin/env python3
"""HellaSwag items per second on the 124M shape: score.py --task against lm-evaluation-harness, one run.

The 124M shape with random weights and GPT-2's vocabulary. The items are HellaSwag's (four endings
after a context) in its published layout: by default --items made-up ones (a context of 46 words, endings
of 14 to 30; about 73 tokens per request), or the first --items of a real hellaswag_val.jsonl given
with --file. Rows: score.py's path (gpt2_tf.tasks on a score.WindowScorer, each sequence padded to a
multiple of 16 tokens) at --batch_size and at batch 1, in float32 and bfloat16, each shape compiled
first, then timed alternately --repeats times (medians); and, when it is installed,
lm-evaluation-harness' `hf` model (PyTorch, float32, its --batch_size) on our Hugging Face export of
the same weights, loaded and warmed up on 4 items before the clock starts. Both give the same figures
(tests/test_tasks.py).

    python bench/tasks.py
    python bench/tasks.py --file hellaswag_val.jsonl --items 200
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import ROOT, print_table, write_random_model  # noqa: E402  (bench/common.py)

from gpt2_tf.cli import Parser, integer, quiet_tensorflow  # noqa: E402  (before TensorFlow)

quiet_tensorflow("--verbose" in sys.argv)

import numpy as np  # noqa: E402

from gpt2_tf import tasks  # noqa: E402
from gpt2_tf.fast_encoder import fastest_encode  # noqa: E402
from gpt2_tf.model_files import find_model, load  # noqa: E402
from gpt2_tf.score import WindowScorer  # noqa: E402

WORDS = ("the man woman child dog ball water kitchen table knife cake then now slowly quickly begins "
         "continues shows holds puts takes into onto with from camera stands sits walks talks").split()

HARNESS = """
    import json, sys, time
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    folder, tasks, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
    model = HFLM(pretrained=folder, dtype="float32", batch_size=batch, device="cpu")
    manager = TaskManager(include_path=tasks)
    lm_eval.simple_evaluate(model=model, tasks=["hellaswag_bench"], task_manager=manager, limit=4)
    start = time.perf_counter()
    lm_eval.simple_evaluate(model=model, tasks=["hellaswag_bench"], task_manager=manager)
    print(json.dumps({"seconds": time.perf_counter() - start}))
"""


def made_up_items(path, count, seed=0):
    """`count` HellaSwag records of GPT-2-like lengths: a context of about 50 tokens, endings of about 25
    (WikiHow items are longer, ActivityNet ones shorter)."""
    rng = np.random.default_rng(seed)

    def text(n):
        return " ".join(rng.choice(WORDS, n)) + "."

    with open(path, "w", encoding="utf-8") as f:
        for i in range(count):
            endings = [text(int(rng.integers(14, 30))) for _ in range(4)]
            record = {"ind": i, "activity_label": "Baking cookies", "ctx_a": text(36), "ctx_b": text(8),
                      "endings": endings, "label": int(rng.integers(0, 4))}
            f.write(json.dumps(record) + "\n")


def harness_seconds(models, file, batch, work):
    """lm-evaluation-harness' seconds for the items of `file`, or None when it is not installed."""
    try:
        import lm_eval
    except ImportError:
        return None
    from gpt2_tf import convert

    hf = os.path.join(work, "hf")
    convert.convert(os.path.join(models, "124M"), hf, to="hf", progress=False)
    tasks_dir = os.path.join(work, "tasks")
    os.makedirs(tasks_dir)
    harness = os.path.join(os.path.dirname(lm_eval.__file__), "tasks", "hellaswag", "hellaswag.yaml")
    with open(os.path.join(tasks_dir, "hellaswag_bench.yaml"), "w") as f:
        f.write(f"include: {harness}\ntask: hellaswag_bench\ndataset_path: json\ntraining_split: null\n"
                f"dataset_kwargs:\n  data_files:\n    validation: {file}\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(HARNESS), hf, tasks_dir, str(batch)],
                            capture_output=True, text=True, env=env, cwd=work)
    if result.returncode:
        raise RuntimeError(f"lm-evaluation-harness failed: {result.stderr.strip().splitlines()[-1:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["seconds"]


def main():
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", help="a hellaswag_val.jsonl to take the items from (default: made-up ones)")
    parser.add_argument("--items", type=integer(2), default=48, help="items timed per round")
    parser.add_argument("--batch_size", type=integer(1), default=8, help="sequences scored together")
    parser.add_argument("--repeats", type=integer(1), default=2, help="timed rounds")
    parser.add_argument("--vocab", default=os.path.join(ROOT, "..", "shared", "gpt2-vocab"),
                        help="folder with encoder.json and vocab.bpe")
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's own log lines")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        models = os.path.join(work, "models")
        write_random_model(os.path.join(models, "124M"), "124M", args.vocab)
        file = os.path.join(work, "hellaswag.jsonl")
        if args.file:
            with open(args.file, encoding="utf-8") as f, open(file, "w", encoding="utf-8") as out:
                out.writelines(line for _, line in zip(range(args.items), f))
        else:
            made_up_items(file, args.items)
        items = tasks.read_task("hellaswag", file)
        files = find_model("124M", models)
        enc = files.encoder()
        found = tasks.requests(items, fastest_encode(enc), enc.eot_token, 1024)
        length = statistics.mean(len(sequence) for sequence, _ in found)
        rows = {}
        for dtype in ("float32", "bfloat16"):
            model = load(files, dtype=None if dtype == "float32" else dtype)[0]
            for batch in (args.batch_size, 1):
                scorer = WindowScorer(model, 1024, batch)
                # One request of each padded length, to compile every shape before the clock starts.
                shapes = {scorer.padded(len(sequence) - 1): (sequence, n) for sequence, n in found}
                tasks.loglikelihoods(scorer, list(shapes.values()))
                rows[f"score.py --task, {dtype}, batch {batch}"] = \
                    lambda scorer=scorer: tasks.evaluate(scorer, "hellaswag", items, found)
        seconds = {name: [] for name in rows}
        for _ in range(args.repeats):
            for name, run in rows.items():
                start = time.perf_counter()
                run()
                seconds[name].append(time.perf_counter() - start)
        medians = {name: statistics.median(values) for name, values in seconds.items()}
        harness = harness_seconds(models, file, args.batch_size, work)
    if harness is not None:
        name = f"lm-evaluation-harness {lm_eval_version()}, hf (PyTorch), float32, batch {args.batch_size}"
        medians[name] = harness
    print(f"{len(items)} HellaSwag items, {len(found)} requests of {length:.0f} tokens on average; 124M "
          f"shape, medians of {args.repeats}")
    peer = harness or medians[next(iter(rows))]
    print_table(["", "items/s", "vs " + ("lm-evaluation-harness" if harness else "the first row"),
                 "10,042 items (the validation set)"],
                [[name, f"{len(items) / s:.2f}", f"{peer / s:.2f}x", f"{10042 * s / len(items) / 60:.0f} min"]
                 for name, s in medians.items()])


def lm_eval_version():
    import importlib.metadata

    return importlib.metadata.version("lm-eval")


if __name__ == "__main__":
    main()
