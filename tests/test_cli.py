"""The scripts as a user meets them: quiet, one-line errors before any work, help text, exit statuses."""

import ast
import os
import pty
import re
import select
import subprocess
import sys
import time

import numpy as np
import pytest
from cli_checks import TF_LOG, assert_refused, frameworks_imported, snapshot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ["download_model.py", "encode.py", "train_bpe.py", "train.py", "sample.py", "lens.py", "score.py",
           "convert.py"]

def script_env():
    """The environment of a user who did not ask for TensorFlow's logs."""
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return env


def run_script(name, *argv, cwd=None, timeout=300, env=None):
    return subprocess.run([sys.executable, os.path.join(ROOT, name), *argv], capture_output=True, text=True,
                          env=env or script_env(), cwd=cwd, timeout=timeout)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("The quick brown fox jumps over the lazy dog. " * 400, encoding="utf-8")
    return str(path)


# ---------------------------------------------------------------------------------------------------
# 1. Quiet by default.


@pytest.mark.slow
def test_scripts_print_no_tensorflow_log_lines(tmp_path, tiny_model, corpus):
    models_dir, name, _ = tiny_model
    model = ["--models_dir", models_dir, "--model_name", name]
    runs = [
        run_script("sample.py", *model, "--length", "4", "--seed", "1"),
        # TensorFlow's usual way of asking for quiet must not give more lines than nothing does.
        run_script("sample.py", *model, "--length", "2", env={**script_env(), "TF_CPP_MIN_LOG_LEVEL": "3"}),
        run_script("train.py", *model, "--dataset", corpus, "--steps", "2", "--sample_every", "2",
                   "--sample_length", "8", "--checkpoint_dir", str(tmp_path / "ckpt"),
                   "--sample_dir", str(tmp_path / "samples")),
        run_script("encode.py", *model, corpus, str(tmp_path / "data.npz")),
        run_script("train_bpe.py", corpus, "--vocab_size", "300", "--out", str(tmp_path / "bpe")),
        run_script("download_model.py", "999M", "--models_dir", str(tmp_path / "models")),
        run_script("sample.py", *model, "--top_k", "-1"),
    ]
    for out in runs[:-2]:
        assert out.returncode == 0, out.args[1:3] + [out.stderr[-2000:]]
    assert runs[-2].returncode == runs[-1].returncode == 2
    for out in runs:
        assert not TF_LOG.search(out.stderr), (out.args[1], out.stderr)
    assert "SAMPLE 1" in runs[0].stdout and "SAMPLE 1" in runs[1].stdout and "Saving" in runs[2].stdout


def test_console_scripts_name_themselves_as_they_were_called(tmp_path):
    """`gpt2-download` says `gpt2-download: error`, as `download_model.py` says `download_model.py: error`."""
    bin_dir = os.path.dirname(sys.executable)
    for script, command in (("download_model.py", "gpt2-download"), ("encode.py", "gpt2-encode")):
        if not os.path.exists(os.path.join(bin_dir, command)):
            pytest.skip(f"{command} is not installed (pip install -e .)")
        for argv in ([sys.executable, os.path.join(ROOT, script)], [os.path.join(bin_dir, command)]):
            bad = "999M" if "download" in script else "--nonsense"
            result = subprocess.run([*argv, bad], capture_output=True, text=True, env=script_env(),
                                    cwd=tmp_path, timeout=60)
            name = os.path.basename(argv[-1])
            assert result.returncode == 2 and result.stderr.splitlines()[-1].startswith(f"{name}: error: ")


def test_extras_have_their_normalised_names():
    """pip 23 finds an extra only by its normalised name (PEP 685): `keras-hub`, never `keras_hub`."""
    tree = ast.parse(open(os.path.join(ROOT, "setup.py"), encoding="utf-8").read())
    call = next(node for node in ast.walk(tree)
                if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup")
    extras = next(k.value for k in call.keywords if k.arg == "extras_require")
    names = [key.value for key in extras.keys]
    assert "keras-hub" in names and all(re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", n) for n in names), names


def test_verbose_shows_tensorflow_logs(tiny_model):
    models_dir, name, _ = tiny_model
    out = run_script("sample.py", "--models_dir", models_dir, "--model_name", name, "--length", "2",
                     "--verbose")
    assert out.returncode == 0 and TF_LOG.search(out.stderr)


def read_until(fd, text, timeout=120):
    """Read a pty until `text` appears; returns everything read."""
    seen = b""
    deadline = time.time() + timeout
    while text.encode() not in seen:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.time()))
        if not ready:
            raise AssertionError(f"{text!r} did not appear; the terminal shows {seen[-500:]!r}")
        try:
            data = os.read(fd, 4096)
        except OSError:  # the other end closed
            data = b""
        if not data:
            raise AssertionError(f"{text!r} did not appear before the end; the terminal shows "
                                 f"{seen[-500:]!r}")
        seen += data
    return seen


def test_interactive_prompt_on_a_terminal(tiny_model):
    """With stderr thrown away, the prompt shows; arrow keys edit the line; Ctrl-D ends on a new line."""
    models_dir, name, _ = tiny_model
    main, child = pty.openpty()
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "sample.py"), "--models_dir", models_dir,
                                "--model_name", name, "--interactive", "--length", "3", "--include_prompt",
                                "--seed", "1"], stdin=child, stdout=child, stderr=subprocess.DEVNULL,
                               env=script_env(), close_fds=True)
    os.close(child)
    try:
        read_until(main, "Model prompt >>> ")
        os.write(main, b"Hello worl\x1b[D\x1b[DXY\r")  # two steps left, then type: "Hello woXYrl"
        screen = read_until(main, "Model prompt >>> ")
        assert b"Hello woXYrl" in screen.split(b"SAMPLE 1")[-1]
        os.write(main, b"\x04")  # Ctrl-D
        assert process.wait(timeout=60) == 0
        rest = b""
        while select.select([main], [], [], 0.5)[0]:
            try:
                data = os.read(main, 4096)
            except OSError:
                break
            if not data:
                break
            rest += data
        assert rest.endswith(b"\n"), rest
    finally:
        process.kill()
        os.close(main)


# ---------------------------------------------------------------------------------------------------
# 2. Bad values are refused before any work, in one line, with exit status 2.


SAMPLE_BAD = [
    ["--top_k", "-5"], ["--top_k", "2.5"], ["--temperature", "-1"], ["--temperature", "nan"],
    ["--temperature", "inf"], ["--top_p", "1.5"], ["--top_p", "-0.1"], ["--top_p", "nan"], ["--length", "0"],
    ["--batch_size", "0"], ["--nsamples", "-1"], ["--seed", "-3"], ["--seed", "99999999999"],
    ["--model_name", "999M"], ["--models_dir", "{tmp}/none"], ["--run_name", "nope"],
    ["--prompt_file", "{tmp}/none.txt"], ["--output", "{tmp}/none/out.txt"], ["--output", "{tmp}"],
    ["--prompt", "a", "--prompt_file", "{tmp}/p.txt"], ["--nsamples", "0", "--prompt", "a"],
    ["--dtype", "float16"],
]


@pytest.mark.parametrize("bad", SAMPLE_BAD, ids=" ".join)
def test_sample_refuses_bad_values(tmp_path, tiny_model, bad):
    models_dir, name, _ = tiny_model
    (tmp_path / "p.txt").write_text("a prompt")
    before = snapshot(tmp_path)
    argv = ["--models_dir", models_dir, "--model_name", name, "--checkpoint_dir", str(tmp_path)]
    out = run_script("sample.py", *argv, *[a.format(tmp=tmp_path) for a in bad], cwd=tmp_path)
    assert_refused(out, "sample.py", tmp_path, before)


TRAIN_BAD = [
    ["--learning_rate", "nan"], ["--learning_rate", "-1"], ["--learning_rate", "0"], ["--batch_size", "0"],
    ["--accumulate_gradients", "0"], ["--noise", "1.5"], ["--noise", "-0.1"], ["--steps", "-1"],
    ["--print_every", "0"], ["--weight_decay", "-0.1"], ["--warmup_steps", "-1"], ["--min_lr", "inf"],
    ["--grad_clip", "0"], ["--lr_decay_steps", "0"], ["--top_k", "-1"], ["--top_p", "2"],
    ["--sample_every", "-1"], ["--sample_num", "-1"], ["--save_every", "-5"], ["--max_to_keep", "-1"],
    ["--val_batch_size", "0"], ["--val_batch_count", "0"], ["--val_every", "-1"], ["--max_nonfinite", "-1"],
    ["--seed", "-1"], ["--combine", "-1"], ["--twremat_memlimit", "lots"], ["--encoding", "utf-99"],
    ["--init", "scratch", "--n_layer", "0"], ["--init", "scratch", "--n_head", "5"],
    ["--n_layer", "2"], ["--min_lr", "1e-3", "--steps", "5"], ["--min_lr", "1e-6"],
    ["--sample_length", "64", "--sample_every", "1"], ["--model_name", "999M"], ["--models_dir", "{tmp}/no"],
    ["--dataset", "{tmp}/none.txt"], ["--val_dataset", "{tmp}/none/*.txt"], ["--restore_from", "{tmp}/no"],
    ["--checkpoint_dir", "{tmp}/file.txt"], ["--sample_dir", "{tmp}/file.txt"], ["--optimizer", "rmsprop"],
]


@pytest.mark.parametrize("bad", TRAIN_BAD, ids=" ".join)
def test_train_refuses_bad_values(tmp_path, tiny_model, corpus, bad):
    models_dir, name, _ = tiny_model
    (tmp_path / "file.txt").write_text("not a folder")
    before = snapshot(tmp_path)
    argv = ["--dataset", corpus, "--models_dir", models_dir, "--model_name", name,
            "--checkpoint_dir", str(tmp_path / "ckpt"), "--sample_dir", str(tmp_path / "samples")]
    out = run_script("train.py", *argv, *[a.format(tmp=tmp_path) for a in bad], cwd=tmp_path)
    assert_refused(out, "train.py", tmp_path, before)


def test_model_hints_are_commands_that_work(tmp_path, tiny_model):
    """A released model that is missing gets the download command for the right folder; another name
    does not get a command that download_model.py would refuse."""
    out = run_script("sample.py", "--models_dir", str(tmp_path / "elsewhere"))
    assert "python download_model.py 124M --models_dir " + str(tmp_path / "elsewhere") in out.stderr
    out = run_script("sample.py", "--models_dir", tiny_model[0], "--model_name", "999M")
    assert "download_model.py" not in out.stderr and tiny_model[1] in out.stderr
    (tmp_path / "models" / "124M").mkdir(parents=True)  # what a failed download once left
    out = run_script("train.py", "--dataset", os.path.join(ROOT, "README.md"), "--models_dir",
                     str(tmp_path / "models"))
    assert out.returncode == 2 and "incomplete" in out.stderr and "download_model.py 124M" in out.stderr


# ---------------------------------------------------------------------------------------------------
# Help and messages.


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_shows_each_default_once(script):
    out = run_script(script, "--help")
    assert out.returncode == 0 and "usage:" in out.stdout
    entries = re.split(r"\n(?=  -)", out.stdout)  # one per flag
    for entry in entries:
        assert "(default: None)" not in entry and entry.count("default") <= 1, entry


def imported_modules(path, seen=None):
    """The files of the gpt2_tf modules a script imports (anywhere in it), and of those they import
    at their top level, at any depth; the script itself included."""
    seen = set() if seen is None else seen
    if path in seen:
        return seen
    seen.add(path)
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    script = os.path.dirname(path) == ROOT
    for node in ast.walk(tree) if script else tree.body:
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gpt2_tf"):
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("gpt2_tf")]
        for name in names:
            file = os.path.join(ROOT, *name.split(".")) + ".py"
            if os.path.exists(file):
                imported_modules(file, seen)
    return seen


def message_flags(path):
    """The --flags named in the error and warning messages of a file: strings given to an exception,
    print() or a parser's error(), and the module's string constants (NAME = "...") that messages use."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    flags = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) \
                and isinstance(node.value.value, str) and all(t.id.isupper() for t in node.targets
                                                               if isinstance(t, ast.Name)):
            flags.update(re.findall(r"(?<![\w-])--[a-z][a-z_]*", node.value.value))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        if not (name.endswith(("Error", "error", "Exception")) or name in ("print", "exit", "warn")):
            continue
        for arg in node.args:
            for part in ast.walk(arg):
                if isinstance(part, ast.Constant) and isinstance(part.value, str):
                    flags.update(re.findall(r"(?<![\w-])--[a-z][a-z_]*", part.value))
    return flags


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_flag_a_message_names_exists(script):
    out = run_script(script, "--help")
    known = set(re.findall(r"(?<![\w-])--[a-z][a-z_]*", out.stdout))
    named = set().union(*(message_flags(f) for f in imported_modules(os.path.join(ROOT, script))))
    assert named - known == set(), f"{script}'s messages name flags it does not have"


# ---------------------------------------------------------------------------------------------------
# 3. Non-finite weights are never saved nor sampled from.


@pytest.mark.slow
def test_diverging_run_keeps_its_last_good_checkpoint(tmp_path, tiny_model, corpus):
    """A learning rate so large that the loss overflows: the bad updates are skipped, the run stops
    with exit status 1 after --max_nonfinite of them, and its newest checkpoint is finite and usable."""
    from gpt2_tf import checkpoint

    models_dir, name, _ = tiny_model
    ckpt = tmp_path / "ckpt"
    out = run_script("train.py", "--dataset", corpus, "--models_dir", models_dir, "--model_name", name,
                     "--checkpoint_dir", str(ckpt), "--learning_rate", "1e30", "--optimizer", "sgd",
                     "--steps", "20", "--save_every", "1", "--sample_every", "0", "--max_nonfinite", "2",
                     "--seed", "1")
    assert out.returncode == 1, out.stdout + out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("train.py: error:")]
    assert len(errors) == 1 and "not finite at 3 steps in a row" in errors[0], out.stderr
    assert out.stderr.count("update skipped") == 3
    newest = checkpoint.latest(str(ckpt / "run1"))
    weights = checkpoint.read(newest)
    assert all(np.isfinite(w).all() for w in weights.values())
    step = int(newest.rsplit("-", 1)[1])
    assert f"stopped with the weights of step {step}" in errors[0]
    resumed = run_script("sample.py", "--run_name", "run1", "--checkpoint_dir", str(ckpt), "--models_dir",
                         models_dir, "--model_name", name, "--length", "3")
    assert resumed.returncode in (0, 1) and "Traceback" not in resumed.stderr


def test_sample_refuses_a_damaged_model(tmp_path, tiny_model):
    """Weights holding NaN (written by another tool) are a one-line error, not a crash in the decoder."""
    import tensorflow as tf

    from gpt2_tf import checkpoint

    models_dir, name, _ = tiny_model
    weights = checkpoint.read(os.path.join(models_dir, name))
    weights["model/ln_f/g"] = np.full_like(weights["model/ln_f/g"], np.nan)
    run = tmp_path / "ckpt" / "bad"
    run.mkdir(parents=True)
    names = sorted(weights)
    tf.raw_ops.SaveV2(prefix=str(run / "model-1"), tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[weights[n] for n in names])
    checkpoint.update_state_file(str(run), "model-1")
    out = run_script("sample.py", "--run_name", "bad", "--checkpoint_dir", str(tmp_path / "ckpt"),
                     "--models_dir", models_dir, "--model_name", name, "--length", "3")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and "model/ln_f/g" in lines[0] and "not finite" in lines[0], out.stderr


def test_the_modules_said_to_need_no_tensorflow_import_none():
    """gpt2_tf.TENSORFLOW_FREE, and every command's module up to its work (the flags and checks)."""
    import gpt2_tf

    names = ("sample", "score", "lens", "train", "train_checks", "encode", "convert", "download", "train_bpe",
             "prompts", "model_flags")
    commands = [f"gpt2_tf.cli.{name}" for name in names]
    assert frameworks_imported(*[f"gpt2_tf.{m}" for m in gpt2_tf.TENSORFLOW_FREE], *commands) == "[]"
