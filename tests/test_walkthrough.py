"""docs/walkthrough.md and docs/zh/walkthrough.md show what docs/walkthrough.py prints, step for step,
so that their shapes, ids and merges are the code's."""

import importlib
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def printed(vocab_dir):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "docs", "walkthrough.py"), "--random", "--vocab",
                          vocab_dir], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    return out.stdout.strip("\n").split("\n\n")


@pytest.mark.parametrize("page", ["walkthrough.md", "zh/walkthrough.md"])
def test_the_walkthrough_shows_what_the_script_prints(printed, page):
    text = open(os.path.join(ROOT, "docs", page), encoding="utf-8").read()
    blocks = re.findall(r"^```\n(\[\d+\].*?)\n```$", text, flags=re.MULTILINE | re.DOTALL)
    assert blocks == printed
    for link in re.findall(r"\]\(([^)#]+)[^)]*\)", text):  # every local link leads to a file
        if "://" not in link:
            assert os.path.exists(os.path.join(ROOT, "docs", os.path.dirname(page), link)), link


def test_the_walkthroughs_steps_are_the_models(printed, vocab_dir):
    """What the script prints is the model's: the pieces of block h0 done by hand give the block's
    own output, and the merges one by one end at the encoder's tokens."""
    from gpt2_tf.encoder import Encoder, load_encoder_files

    enc = Encoder(*load_encoder_files(vocab_dir))
    assert "the same as the block's own call, h0(h): True" in "\n".join(printed)
    assert printed[1].endswith(f"tokens: {enc.encode(' tokenization')}")
    assert f"-> {enc.encode(' Hello, tokenization')}" in printed[2]


SCRIPTS = {"download_model.py": "download", "encode.py": "encode", "train_bpe.py": "train_bpe",
           "train.py": "train", "sample.py": "sample", "score.py": "score", "lens.py": "lens",
           "attention.py": "attention", "convert.py": "convert"}


def commands(text):
    """The `python SCRIPT ...` lines of a page's indented code, with their `\\` continuations joined."""
    lines = text.replace("\\\n", " ").splitlines()
    return [shlex.split(line.split("#")[0]) for line in lines if line.startswith("    python ")]


@pytest.mark.parametrize("page", ["README.md", "README.zh-CN.md", "docs/attention.md", "docs/lens.md"])
def test_the_commands_a_page_gives_are_accepted_by_their_scripts(page):
    """Every command of the page parses: its flags exist and their values are of the right kinds."""
    found = 0
    for argv in commands(open(os.path.join(ROOT, page), encoding="utf-8").read()):
        script = argv[1]
        if script not in SCRIPTS:
            continue
        parser = importlib.import_module(f"gpt2_tf.cli.{SCRIPTS[script]}").make_parser()
        try:
            parser.parse_intermixed_args(argv[2:])
        except SystemExit:
            pytest.fail(f"{page}: {' '.join(argv)} is refused by its parser")
        found += 1
    assert found
