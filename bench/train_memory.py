#!/usr/bin/env python3
"""Peak memory of whole train.py runs, the final save included, on the released shapes.

For each configuration a model of that shape with random weights is written once in the original
layout (models/<size>/ under --work), then `train.py --steps 2` runs on it as a user would, under
/usr/bin/time -v. While it runs, its resident memory is sampled every 0.1 s, so that the peak before
`Saving` (training) and the peak after it (the save) are told apart; the speed is that of the second
update (the first one compiles). Each run must end with exit 0 and a checkpoint that loads as
sample.py loads it (a LoRA run: merged).

    python bench/train_memory.py                       # every configuration (about 25 minutes)
    python bench/train_memory.py --only 124M-adam      # one of them

The tokenizer files are GPT-2's, from --vocab (default: ../shared/gpt2-vocab, as the tests use).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from gpt2_tf.cli import Parser  # noqa: E402

CONFIGS = {
    "124M-adam": ("124M", ["--optimizer", "adam"]),
    "774M-adam-saving": ("774M", ["--optimizer", "adam", "--memory_saving_gradients"]),
    "1558M-sgd-saving": ("1558M", ["--optimizer", "sgd", "--memory_saving_gradients"]),
    "1558M-adafactor-saving": ("1558M", ["--optimizer", "adafactor", "--memory_saving_gradients"]),
    "1558M-adam-lora16-saving": ("1558M", ["--optimizer", "adam", "--lora_rank", "16",
                                           "--memory_saving_gradients"]),
    "1558M-adam-lora16": ("1558M", ["--optimizer", "adam", "--lora_rank", "16"]),
    "774M-adam-lora16": ("774M", ["--optimizer", "adam", "--lora_rank", "16"]),
}

WRITE_MODEL = """
import sys
from gpt2_tf.cli import quiet_tensorflow
quiet_tensorflow()
from gpt2_tf import checkpoint
from gpt2_tf.hparams import released, save_hparams
from gpt2_tf.model import GPT2
folder = sys.argv[1]
hparams = released(sys.argv[2])
checkpoint.save(GPT2(hparams), folder + "/model.ckpt")
save_hparams(hparams, folder + "/hparams.json")
"""

# The run's newest checkpoint loaded as sample.py loads it (a LoRA run: its base with the factors merged).
READ_BACK = """
import sys
from gpt2_tf.cli import quiet_tensorflow
quiet_tensorflow()
from gpt2_tf import model_files
model_files.load(model_files.find_model(run_name=sys.argv[2], checkpoint_dir=sys.argv[1]))
"""


def write_model(work, size, vocab):
    """models/<size>/ under `work`: random weights of the released shape, hparams and tokenizer."""
    folder = os.path.join(work, "models", size)
    if os.path.exists(os.path.join(folder, "checkpoint")):
        return
    os.makedirs(folder, exist_ok=True)
    for name in ("encoder.json", "vocab.bpe"):
        shutil.copy(os.path.join(vocab, name), folder)
    subprocess.run([sys.executable, "-c", WRITE_MODEL, folder, size], check=True, cwd=ROOT)


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure(work, name, size, flags):
    """Run train.py --steps 2 on the model; {training, saving, total} peak GiB, the second update's
    tokens/s (the first one compiles), seconds, exit status."""
    run_dir = os.path.join(work, "checkpoint")
    shutil.rmtree(os.path.join(run_dir, name), ignore_errors=True)
    command = ["/usr/bin/time", "-v", sys.executable, "train.py", "--dataset", os.path.join(work, "data.npz"),
               "--models_dir", os.path.join(work, "models"), "--model_name", size, "--run_name", name,
               "--checkpoint_dir", run_dir, "--steps", "2", "--sample_every", "0", "--seed", "1", *flags]
    start = time.time()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks = {"training": 0, "saving": 0}
    phase = ["training"]
    lines = []

    def read_stdout():
        for line in process.stdout:
            lines.append(line)
            if line.startswith("Saving"):
                phase[0] = "saving"

    reader = threading.Thread(target=read_stdout)
    reader.start()
    child = None
    while process.poll() is None:
        if child is None:  # /usr/bin/time's child, the Python process
            try:
                with open(f"/proc/{process.pid}/task/{process.pid}/children") as f:
                    child = int(f.read().split()[0])
            except (OSError, IndexError, ValueError):
                pass
        if child is not None:
            peaks[phase[0]] = max(peaks[phase[0]], rss_kib(child))
        time.sleep(0.1)
    reader.join()
    stderr = process.stderr.read()
    total = next((int(line.split()[-1]) for line in stderr.splitlines() if "Maximum resident" in line), 0)
    loads = subprocess.run([sys.executable, "-c", READ_BACK, run_dir, name], cwd=ROOT, capture_output=True,
                           text=True)
    gib = 1 << 20
    # train.py's progress lines, "[step | seconds since training began] loss=...": one batch of 1 x 1024
    times = [float(m.group(1)) for m in (re.match(r"\[\d+ \| ([\d.]+)\]", line) for line in lines) if m]
    speed = round(1024 / (times[1] - times[0]), 1) if len(times) == 2 else None
    return {"config": name, "exit": process.returncode, "seconds": round(time.time() - start),
            "tokens_per_s": speed,
            "training_peak_gib": round(peaks["training"] / gib, 2),
            "save_peak_gib": round(peaks["saving"] / gib, 2),
            "max_rss_gib": round(total / gib, 2), "checkpoint_loads": loads.returncode == 0,
            "error": "" if process.returncode == 0 else stderr.strip().splitlines()[-1:]}


def main():
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=os.path.expanduser("~/.cache/gpt2-tf-bench/memory"),
                        help="where the models, data and runs are written")
    parser.add_argument("--vocab", default=os.path.join(ROOT, "..", "shared", "gpt2-vocab"))
    parser.add_argument("--only", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    data = os.path.join(args.work, "data.npz")
    if not os.path.exists(data):
        import numpy as np

        np.savez(data, np.random.RandomState(0).randint(0, 50257, 100_000).astype(np.uint16))
    for name in args.only:
        size, flags = CONFIGS[name]
        write_model(args.work, size, args.vocab)
        print(json.dumps(measure(args.work, name, size, flags)), flush=True)


if __name__ == "__main__":
    main()
