"""The scripts at the edges: mistakes refused before TensorFlow loads, damaged checkpoints and full or
read-only disks told in one line without losing work, one writer per run, and one exit convention
(2 bad usage or input, 1 failed while working, 130 Ctrl-C, 143 SIGTERM, 141 a reader gone)."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from cli_checks import TF_LOG, assert_refused, snapshot

from gpt2_tf.files import FolderLock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def env(**extra):
    """A user's environment: TensorFlow's log level not set."""
    values = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return {**values, **extra}


@pytest.fixture(scope="module")
def no_tensorflow(tmp_path_factory):
    """An environment in which importing TensorFlow fails loudly: a refusal that comes without a
    traceback in it came before TensorFlow was imported."""
    folder = tmp_path_factory.mktemp("no_tensorflow")
    (folder / "tensorflow").mkdir()
    (folder / "tensorflow" / "__init__.py").write_text("raise ImportError('TensorFlow was imported')\n")
    return env(PYTHONPATH=os.pathsep.join([str(folder), ROOT]))


def script(name, *argv, environment=None, cwd=None, timeout=300):
    return subprocess.run([sys.executable, os.path.join(ROOT, name), *argv], capture_output=True, text=True,
                          env=environment or env(), cwd=cwd, timeout=timeout)


@pytest.fixture
def run_folder(tmp_path, tiny_model):
    """A training run of two checkpoints (model-1, model-2), as train.py lays it out, made from the tiny
    model's files: (checkpoint_dir, run name, run folder)."""
    models_dir, name, _ = tiny_model
    run = tmp_path / "checkpoint" / "run1"
    run.mkdir(parents=True)
    source = os.path.join(models_dir, name)
    for n in (1, 2):
        for suffix in (".index", ".data-00000-of-00001"):
            shutil.copy(os.path.join(source, "model.ckpt" + suffix), run / f"model-{n}{suffix}")
    for f in ("hparams.json", "encoder.json", "vocab.bpe"):
        shutil.copy(os.path.join(source, f), run / f)
    (run / "checkpoint").write_text('model_checkpoint_path: "model-2"\n'
                                    'all_model_checkpoint_paths: "model-1"\n'
                                    'all_model_checkpoint_paths: "model-2"\n')
    return str(tmp_path / "checkpoint"), "run1", run


def one_line(result, script_name, status, message):
    """The script ended with `status` and one line `<script>: ...` holding `message`, last on stderr;
    before it at most what a started run prints there (progress bars, the optimizer's name)."""
    lines = result.stderr.splitlines()
    assert result.returncode == status, (result.args[1:], result.returncode, result.stderr[-2000:])
    assert lines and lines[-1].startswith(f"{script_name}: "), (result.args[1:], result.stderr)
    assert message in lines[-1], (message, lines[-1])
    assert [line for line in lines if script_name in line] == lines[-1:], result.stderr
    assert "Traceback" not in result.stderr and not TF_LOG.search(result.stderr)


def test_what_hparams_and_tokenizer_tell_is_refused_before_tensorflow(tmp_path, tiny_model, no_tensorflow):
    models_dir, name, _ = tiny_model
    model = ["--models_dir", models_dir, "--model_name", name]
    long_prompt = tmp_path / "long.txt"
    long_prompt.write_text(" word" * 70)
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n\n")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café\n".encode("latin-1"))
    (tmp_path / "ckpt" / "started").mkdir(parents=True)
    (tmp_path / "ckpt" / "done").mkdir()
    (tmp_path / "ckpt" / "done" / "checkpoint").write_text("")
    runs = ["--checkpoint_dir", str(tmp_path / "ckpt")]
    cases = [
        ("sample.py", [*model, "--length", "65"], "Can't get samples longer than window size: 64"),
        ("sample.py", [*model, "--length", "64", "--prompt", "Hello world"], "the prompt has 2 tokens"),
        ("sample.py", [*model, "--prompt_file", str(long_prompt), "--length", "10"], "prompt has 70 tokens"),
        ("sample.py", [*model, "--sliding_window", "--window_shift", "500"], "must be 1 to n_ctx - 1 = 63"),
        ("sample.py", [*model, "--prompts", str(blank)], "holds no prompts"),
        ("sample.py", [*model, "--prompts", str(tmp_path)], "is a folder"),
        ("sample.py", [*model, "--prompts", str(latin)], f"{latin}: not valid utf-8 at byte 3"),
        ("sample.py", [*model, "--batch_size", str(2**40)], "must be at most 2147483647"),
        ("sample.py", [*model, *runs, "--run_name", "started"], "has no checkpoint yet"),
        ("sample.py", [*model, *runs, "--run_name", "nosuchrun"], "no training run nosuchrun"),
        ("lens.py", [*model, "--prompt", "Hello", "--watch", ""], "--watch '' is empty"),
        ("lens.py", [*model, "--prompt", "Hello world", "--position", "5"], "outside the prompt's 2 tokens"),
        ("score.py", [str(long_prompt), *model, "--context", "65"], "more than the model's n_ctx = 64"),
        ("score.py", [str(long_prompt), *model, "--batch_size", "100000000"], "GiB available; give smaller"),
        ("train.py", ["--dataset", str(long_prompt), *model, "--batch_size", "2000000000"], "GiB available"),
    ]
    for name_, argv, message in cases:
        before = snapshot(str(tmp_path))
        result = script(name_, *argv, environment=no_tensorflow)
        assert_refused(result, name_, str(tmp_path), before, message)
    listed = script("sample.py", *model, *runs, "--run_name", "nosuchrun", environment=no_tensorflow)
    assert "it has done" in listed.stderr


@pytest.mark.slow
def test_the_same_mistake_gets_the_same_status_everywhere(tmp_path, tiny_model):
    models_dir, name, _ = tiny_model
    model = ["--models_dir", models_dir, "--model_name", name]
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 au lait\n".encode("latin-1") * 50)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    for path, message in ((latin, "not valid utf-8"), (empty, "empty")):
        runs = [script("encode.py", *model, str(path), str(tmp_path / "out.npz")),
                script("score.py", str(path), *model),
                script("train.py", *model, "--dataset", str(path), "--checkpoint_dir", str(tmp_path / "c"),
                       "--steps", "1")]
        for result, name_ in zip(runs, ("encode.py", "score.py", "train.py")):
            one_line(result, name_, 2, message)
    assert not os.path.exists(tmp_path / "out.npz")


def test_a_damaged_checkpoint_is_one_line_naming_the_older_one(run_folder, tiny_model):
    models_dir, name, _ = tiny_model
    checkpoint_dir, run, folder = run_folder
    data = folder / "model-2.data-00000-of-00001"
    with open(data, "r+b") as f:
        f.truncate(os.path.getsize(data) // 2)
    flags = ["--checkpoint_dir", checkpoint_dir, "--run_name", run, "--models_dir", models_dir,
             "--model_name", name]
    message = (f"checkpoint {folder}/model-2 is damaged: {data}: tensor model/wte does not fit the file "
               f"(truncated?); the newest intact checkpoint of {folder} is {folder}/model-1")
    corpus = folder / "hparams.json"
    for name_, argv in (("sample.py", []), ("score.py", [str(corpus)]), ("lens.py", ["--prompt", "Hi"]),
                        ("train.py", ["--dataset", str(corpus)]), ("convert.py", [])):
        if name_ == "convert.py":
            result = script(name_, str(folder), str(folder.parent / "out"), "--to", "hf")
        else:
            result = script(name_, *argv, *flags)
        one_line(result, name_, 1, message if name_ != "convert.py" else "does not fit the file (truncated?)")


def test_a_checkpoint_failing_its_checksums_is_one_line(run_folder, tiny_model):
    models_dir, name, _ = tiny_model
    checkpoint_dir, run, folder = run_folder
    with open(folder / "model-2.data-00000-of-00001", "r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02\x03" * 64)
    result = script("sample.py", "--checkpoint_dir", checkpoint_dir, "--run_name", run, "--length", "2")
    one_line(result, "sample.py", 1, f"checkpoint {folder}/model-2 is damaged: ")


def test_one_run_one_writer_and_readers_keep_working(run_folder, tmp_path, tiny_model):
    models_dir, name, _ = tiny_model
    checkpoint_dir, run, folder = run_folder
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Some text to train on. " * 200)
    with FolderLock(str(folder)):
        refused = script("train.py", "--dataset", str(corpus), "--checkpoint_dir", checkpoint_dir,
                         "--run_name", run, "--models_dir", models_dir, "--model_name", name, "--steps", "1")
        one_line(refused, "train.py", 2, f"run {run} ({folder}) is being trained by process {os.getpid()}")
        read = script("sample.py", "--checkpoint_dir", checkpoint_dir, "--run_name", run, "--length", "3",
                      "--seed", "1")
        assert read.returncode == 0 and "SAMPLE 1" in read.stdout, read.stderr[-2000:]
    assert sorted(os.listdir(folder)) == sorted(
        [".lock", "checkpoint", "encoder.json", "hparams.json", "vocab.bpe"]
        + [f"model-{n}{s}" for n in (1, 2) for s in (".index", ".data-00000-of-00001")])


def test_outputs_that_cannot_be_written_are_refused_before_the_work(tmp_path, tiny_model, read_only_folder,
                                                                   no_tensorflow):
    models_dir, name, _ = tiny_model
    model = ["--models_dir", models_dir, "--model_name", name]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Some text. " * 50)
    ro = str(read_only_folder)
    cases = [("train.py", ["--dataset", str(corpus), *model, "--checkpoint_dir", os.path.join(ro, "c")]),
             ("train.py", ["--dataset", str(corpus), *model, "--sample_dir", ro]),
             ("sample.py", [*model, "--output", os.path.join(ro, "s.txt")]),
             ("score.py", [str(corpus), *model, "--json", os.path.join(ro, "s.json")]),
             ("lens.py", [*model, "--prompt", "Hi", "--html", os.path.join(ro, "l.html")]),
             ("encode.py", [*model, str(corpus), os.path.join(ro, "d.npz")]),
             ("convert.py", [os.path.join(models_dir, name), os.path.join(ro, "hf"), "--to", "hf"]),
             ("train_bpe.py", [str(corpus), "--vocab_size", "300", "--out", os.path.join(ro, "bpe")])]
    for name_, argv in cases:
        before = snapshot(str(tmp_path))
        result = script(name_, *argv, environment=no_tensorflow, cwd=str(tmp_path))
        assert_refused(result, name_, str(tmp_path), before, f"cannot write in {ro}")


@pytest.mark.slow
def test_a_full_disk_during_training_costs_nothing_saved(tmp_path, tiny_model, full_disk):
    """Samples that cannot be written are warned about and training goes on; a checkpoint that cannot
    be written stops the run in one line, and the newest checkpoint stays the newest, whole."""
    models_dir, name, _ = tiny_model
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The quick brown fox jumps over the lazy dog. " * 200)
    checkpoints, samples = full_disk("24m"), full_disk("64k")
    fd = os.open(samples / "filler", os.O_WRONLY | os.O_CREAT)  # a disk with no room left
    try:
        while True:
            os.write(fd, b"x" * 4096)
    except OSError:
        os.close(fd)
    result = script("train.py", "--dataset", str(corpus), "--models_dir", models_dir, "--model_name", name,
                    "--checkpoint_dir", str(checkpoints), "--sample_dir", str(samples), "--steps", "4",
                    "--save_every", "2", "--sample_every", "1", "--sample_length", "4")
    run = checkpoints / "run1"
    errors = [line for line in result.stderr.splitlines() if "error" in line or "warning" in line]
    assert result.returncode == 1, result.stderr[-3000:]
    assert errors[-1] == (f"train.py: error: could not save {run}/model-4: No space left on device; the run "
                          f"stopped at step 4, and its newest checkpoint is still {run}/model-2")
    warnings = [line for line in errors if line.startswith("warning: cannot write")]
    assert len(warnings) == 4 and all("No space left on device; training goes on" in w for w in warnings)
    assert (run / "checkpoint").read_text().count('"model-2"') == 2
    left = sorted(n for n in os.listdir(run) if n.startswith(("model-", ".tmp")))
    assert left == ["model-2.data-00000-of-00001", "model-2.index", "model-2.train"]
    assert [name for _, _, names in os.walk(samples) for name in names] == ["filler"]  # not half a sample


@pytest.mark.slow
def test_output_to_a_full_disk_is_one_line_and_no_partial_file(tmp_path, tiny_model, full_disk):
    models_dir, name, _ = tiny_model
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"line {i} of a corpus bigger than the disk\n" for i in range(20000)))
    disk = full_disk("64k")
    result = script("encode.py", "--models_dir", models_dir, "--model_name", name, str(corpus),
                    str(disk / "data.npz"), "--no_compress", "--quiet")
    one_line(result, "encode.py", 1, f"cannot write {disk / 'data.npz'}: No space left on device")
    assert os.listdir(disk) == []
    corpus.write_text("A short text to score. " * 20)
    scored = script("score.py", str(corpus), "--models_dir", models_dir, "--model_name", name, "--json",
                    "/dev/full", "--quiet")
    one_line(scored, "score.py", 1, "cannot write /dev/full: No space left on device")
    for to in ("hf", "tf1"):  # a folder written whole or not at all, and the error names it
        converted = script("convert.py", os.path.join(models_dir, name), str(disk / to), "--to", to,
                           "--quiet")
        one_line(converted, "convert.py", 1, f"cannot write {disk / to}: No space left on device")
    assert os.listdir(disk) == []


@pytest.mark.slow
def test_pipes_interrupts_and_signals(tmp_path, tiny_model):
    models_dir, name, _ = tiny_model
    model = ["--models_dir", models_dir, "--model_name", name]
    sample = [sys.executable, os.path.join(ROOT, "sample.py"), *model]
    # A reader that goes away: quiet, with a SIGPIPE's status.
    piped = subprocess.run(["bash", "-c", "set -o pipefail; \"$@\" | head -1", "_", *sample,
                            "--nsamples", "50", "--length", "4"], capture_output=True, text=True, env=env(),
                           timeout=300)
    assert piped.returncode == 141 and piped.stderr == "" and piped.stdout.startswith("=" * 40)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The quick brown fox jumps over the lazy dog. " * 200)
    scored = subprocess.run(["bash", "-c", "\"$@\" | head -2", "_", sys.executable,
                             os.path.join(ROOT, "score.py"), str(corpus), *model, "--tsv", "/dev/stdout"],
                            capture_output=True, text=True, env=env(), timeout=300)
    rows = scored.stdout.splitlines()
    assert len(rows) == 2 and rows[0].startswith("document\tposition") and rows[1].startswith(str(corpus))
    assert not os.path.isfile("/dev/stdout") or os.path.islink("/dev/stdout")
    # Ctrl-C at any moment, the TensorFlow import included, is one line and 130.
    for delay in (0.5, 2.0):
        process = subprocess.Popen(sample + ["--nsamples", "0"], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=env())
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
        lines = err.strip().splitlines()
        assert process.returncode == 130, err
        assert len(lines) == 1 and lines[0].startswith("sample.py: interrupted; "), err
