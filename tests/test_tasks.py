"""score.py --task hellaswag|lambada against a float64 NumPy oracle of lm-evaluation-harness' definitions,
and against lm-evaluation-harness itself run on our Hugging Face export; train.py --eval_task."""

import importlib.util
import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from cli_checks import assert_refused, run_tool, snapshot
from numpy_gpt2 import forward
from tf1_model import TINY_HPARAMS

from gpt2_tf.cli.score import main as score_main
from gpt2_tf.encoder import get_encoder

EOT = 50256
WORDS = ("the a man woman dog ball river house runs jumps throws paints slowly quickly red blue small "
         "garden kitchen ladder knife cake guitar").split()


def words(rng, n):
    return " ".join(rng.choice(WORDS) for _ in range(n))


def hellaswag_records(rng, n):
    """Items in the published hellaswag_val.jsonl layout, with what the preprocessing must handle: WikiHow's
    [title] and [step] tags, double spaces, a lower-case ctx_b, a label written as a string (the Hugging Face
    copy), a context longer than the tiny model's window, and non-ASCII text."""
    records = []
    for i in range(n):
        ctx_a = words(rng, int(rng.integers(3, 12))) + "."
        if i % 3 == 0:
            ctx_a = f"How to {words(rng, 2)} [title] {ctx_a}  [step] {words(rng, 3)}"
        if i == 4:
            ctx_a = " ".join([ctx_a] * 12)  # about 100 tokens: more than n_ctx = 64
        endings = [words(rng, int(rng.integers(1, 9))) + ("  [substeps] ok." if j == 1 else ".")
                   for j in range(4)]
        if i % 4 == 1:  # characters of 2 and 3 bytes: acc_norm divides by characters, not bytes
            endings[i % 3] = "café über señor naïve." if i % 8 == 1 else "日本の庭で猫が寝ている。"
        label, ctx_b = int(rng.integers(0, 4)), words(rng, int(rng.integers(0, 4)))
        records.append({"ind": i, "activity_label": "Making a cake" if i % 2 else "Painting",
                        "ctx_a": ctx_a, "ctx_b": ctx_b, "ctx": f"{ctx_a} {ctx_b}",
                        "endings": endings, "label": str(label) if i == 7 else label, "split": "val",
                        "split_type": "indomain", "source_id": f"test~{i}"})
    return records


def greedy_word(weights, enc, context):
    """The word that the model, after `context`, predicts greedily as one token (" " + letters), or None."""
    logits = forward(weights, TINY_HPARAMS, np.array([enc.encode(context)]), last_only=True)[0][0, -1]
    text = enc.decode([int(np.argmax(logits))])
    return text[1:] if text.startswith(" ") and text[1:].isalpha() else None


def lambada_texts(rng, n, weights, enc):
    """Texts in the layout of OpenAI's lambada_test.jsonl: a passage whose last word is the target. Two
    end in the word the model predicts greedily (so that acc counts some), one has a double space before
    its last word (a context that ends in a space), one is longer than the window."""
    texts = []
    for _ in range(500):
        context = words(rng, int(rng.integers(3, 15)))
        word = greedy_word(weights, enc, context)
        if word is not None:
            texts.append(f"{context} {word}")
        if len(texts) == 2:
            break
    texts += [words(rng, int(rng.integers(2, 30))) for _ in range(n)]
    return texts + [words(rng, 5) + "  garden", " ".join([words(rng, 20)] * 5)]


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------------------------------------
# The oracle: the definitions written out, then a float64 forward pass.

def oracle_preprocess(text):
    text = text.strip().replace(" [title]", ". ")
    out, i = [], 0
    while i < len(text):  # each "[" up to the next "]" on its line goes: WikiHow's tags
        close = text.find("]", i)
        if text[i] == "[" and close != -1 and "\n" not in text[i:close]:
            i = close + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out).replace("  ", " ")


def oracle_requests(task, record):
    """[(context, continuation)] and, for HellaSwag, (gold, ending lengths: None for llm.c's, in tokens)."""
    if task == "hellaswag_llmc":
        return [(record["ctx"], " " + e) for e in record["endings"]], (int(record["label"]), None)
    if task == "hellaswag":
        query = oracle_preprocess(f"{record['activity_label']}: {record['ctx_a']} "
                                  f"{record['ctx_b'][:1].upper() + record['ctx_b'][1:].lower()}")
        endings = [oracle_preprocess(e) for e in record["endings"]]
        return [(query, " " + e) for e in endings], (int(record["label"]), [len(e) for e in endings])
    *before, last = record["text"].split(" ")
    return [(" ".join(before), " " + last)], None


def oracle_loglikelihood(weights, hparams, enc, context, continuation, n_ctx, apart=False):
    """(sum of log p of the continuation's tokens, whether each is the argmax, their number), in float64.
    apart: llm.c's tokenization, each text by itself."""
    if apart:
        whole, target = enc.encode(context) + enc.encode(continuation), enc.encode(continuation)
    else:  # lm-eval's: the context's trailing spaces go to the continuation, then the whole text
        stripped = context.rstrip(" ")
        continuation = context[len(stripped):] + continuation
        whole, start = enc.encode(stripped + continuation), enc.encode(stripped)
        assert whole[:len(start)] == start
        target = whole[len(start):]
    sequence = whole[-(n_ctx + 1):]
    logits = forward(weights, hparams, np.array([sequence[:-1]]))[0][0]
    logits = logits[len(sequence) - 1 - len(target):]
    log_p = logits - logits.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    picked = log_p[np.arange(len(target)), target]
    return float(picked.sum()), bool(np.all(logits.argmax(-1) == target)), len(target)


def oracle(task, records, weights, hparams, enc):
    """Per item [loglikelihoods] and correct (and correct_norm); and the task's figures."""
    items = []
    for record in records:
        pairs, extra = oracle_requests(task, record)
        apart, n_ctx = task == "hellaswag_llmc", hparams["n_ctx"]
        scores = [oracle_loglikelihood(weights, hparams, enc, c, s, n_ctx, apart) for c, s in pairs]
        lls = [ll for ll, _, _ in scores]
        if task != "lambada":
            gold, lengths = extra
            lengths = lengths or [count for _, _, count in scores]
            items.append({"loglikelihoods": lls, "correct": int(np.argmax(lls) == gold),
                          "correct_norm": int(np.argmax(np.array(lls) / lengths) == gold)})
        else:
            items.append({"loglikelihoods": lls, "correct": int(scores[0][1])})
    n = len(items)

    def mean_and_stderr(key):
        values = [item[key] for item in items]
        mean = sum(values) / n
        return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) / math.sqrt(n)

    figures = {"acc": mean_and_stderr("correct")}
    if task != "lambada":
        figures["acc_norm"] = mean_and_stderr("correct_norm")
    else:
        figures["ppl"] = math.exp(-sum(item["loglikelihoods"][0] for item in items) / n)
    return items, figures


@pytest.fixture(scope="module")
def task_files(tmp_path_factory, tiny_model):
    """(folder, {task: records}) with the records written as the published files are."""
    models_dir, name, weights = tiny_model
    folder = tmp_path_factory.mktemp("tasks")
    rng, enc = np.random.default_rng(0), get_encoder(name, models_dir)
    records = {"hellaswag": hellaswag_records(rng, 14),
               "lambada": [{"text": t} for t in lambada_texts(rng, 10, weights, enc)]}
    write_jsonl(folder / "hellaswag_val.jsonl", records["hellaswag"])
    write_jsonl(folder / "lambada_test.jsonl", records["lambada"])
    return folder, records


@pytest.mark.parametrize("task, file", [("hellaswag", "hellaswag_val.jsonl"),
                                        ("hellaswag_llmc", "hellaswag_val.jsonl"),
                                        ("lambada", "lambada_test.jsonl")])
def test_task_figures_agree_with_a_float64_numpy_oracle(tiny_model, task_files, tmp_path, task, file):
    models_dir, name, weights = tiny_model
    folder, records = task_files
    records = records["lambada" if task == "lambada" else "hellaswag"]
    expected, figures = oracle(task, records, weights, TINY_HPARAMS, get_encoder(name, models_dir))
    out = tmp_path / "out.json"
    total = score_main(["--task", task, str(folder / file), "--models_dir", models_dir, "--model_name", name,
                        "--batch_size", "3", "--json", str(out), "--quiet"])
    written = json.load(open(out))
    assert written["total"] == total and written["files"][0]["items"] == len(records)
    for got, want in zip(written["items"], expected, strict=True):
        np.testing.assert_allclose(got["loglikelihoods"], want["loglikelihoods"], rtol=1e-5, atol=1e-4)
        assert {k: got[k] for k in want if k != "loglikelihoods"} == \
            {k: v for k, v in want.items() if k != "loglikelihoods"}
    for key, (mean, stderr) in ((k, v) for k, v in figures.items() if k != "ppl"):
        assert total[key] == pytest.approx(mean) and total[f"{key}_stderr"] == pytest.approx(stderr)
    if task == "lambada":
        assert total["ppl"] == pytest.approx(figures["ppl"], rel=1e-5)
        assert 0 < total["acc"] < 1  # some items are predicted greedily, some not
    else:
        assert written["items"][7]["name"].endswith(":8")  # named FILE:LINE


def test_preprocessing_is_the_harness_one():
    from gpt2_tf.tasks import preprocess

    text = " How to bake [title] Mix it.  [step] Pour [header] in the  pan. "
    # One pass of "  " -> " ": the three spaces left where [step] was become two, as in the harness.
    assert preprocess(text) == oracle_preprocess(text) == "How to bake. Mix it.  Pour in the pan."


def test_acc_norm_divides_by_characters_as_the_harness_does(tmp_path):
    from gpt2_tf.tasks import read_task, results

    record = {"activity_label": "a", "ctx_a": "b", "ctx_b": "c", "endings": ["éé", "abc"], "label": 0}
    write_jsonl(tmp_path / "h.jsonl", [record])
    items = read_task("hellaswag", str(tmp_path / "h.jsonl"))
    # Per character -1.5 and -0.83: "abc" wins; per UTF-8 byte -0.75 and -0.83 would pick "éé".
    (result,) = results("hellaswag", items, np.array([-3.0, -2.5]), np.zeros(2, bool))
    assert result["correct"] == 0 and result["correct_norm"] == 0


def test_the_table_gives_accuracy_with_its_standard_error(tiny_model, task_files, capsys):
    models_dir, name, _ = tiny_model
    folder, records = task_files
    score_main(["--task", "hellaswag", str(folder / "hellaswag_val.jsonl"), "--models_dir", models_dir,
                "--model_name", name])
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["hellaswag", "items", "acc", "±", "acc_norm", "±"]
    assert row.split()[1] == str(len(records["hellaswag"])) and row.split()[2].endswith("%")


@pytest.mark.parametrize("task, lines, flags, message", [
    ("hellaswag", ['{"activity_label": "a", "ctx_a": "b"'], [], "bad.jsonl line 1: not valid JSON"),
    ("hellaswag", ['', '{"activity_label": "a", "ctx_a": "b", "ctx_b": "c", "endings": ["x"]}'], [],
     'bad.jsonl line 2: "label" must be'),
    ("hellaswag", ['{"text": "a b"}'], [], 'no "activity_label" str'),
    ("lambada", ['{"text": "word"}'], [], "line 1: the text has no space"),
    ("lambada", [], [], "holds no lambada items"),
    ("lambada", ['{"text": "a b"}'], ["--stride", "4"], "--stride is for scoring text"),
    ("lambada", ['{"text": "a b"}'], ["--tsv", "x.tsv"], "--tsv is for scoring text"),
])
def test_bad_task_files_and_flags_are_refused_in_one_line(tiny_model, tmp_path, task, lines, flags, message):
    models_dir, name, _ = tiny_model
    (tmp_path / "bad.jsonl").write_text("\n".join(lines), encoding="utf-8")
    before = snapshot(tmp_path)
    result = run_tool("score.py", "--task", task, str(tmp_path / "bad.jsonl"), *flags, "--models_dir",
                      models_dir, "--model_name", name)
    assert_refused(result, "score.py", tmp_path, before, message)


# ---------------------------------------------------------------------------------------------------
# lm-evaluation-harness itself, offline, on our Hugging Face export.

HARNESS = """
    import json, sys
    import lm_eval
    from lm_eval.tasks import TaskManager

    model, tasks, out = sys.argv[1:4]
    result = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={model},dtype=float32",
                                     tasks=["hellaswag_local", "lambada_local"], batch_size=4, device="cpu",
                                     task_manager=TaskManager(include_path=tasks), log_samples=True)
    samples = {task: {s["doc_id"]: [r[0][0] for r in s["resps"]] for s in found}
               for task, found in result["samples"].items()}
    json.dump({"results": result["results"], "samples": samples}, open(out, "w"), default=str)
"""


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None, reason="lm-evaluation-harness not installed")
def test_lm_evaluation_harness_gives_the_same_figures_on_our_export(tiny_model, task_files, tmp_path):
    import lm_eval

    from gpt2_tf import convert

    models_dir, name, _ = tiny_model
    folder, records = task_files
    convert.convert(os.path.join(models_dir, name), str(tmp_path / "hf"), to="hf", progress=False)
    harness_tasks = os.path.join(os.path.dirname(lm_eval.__file__), "tasks")
    (tmp_path / "tasks").mkdir()
    # The harness' own task definitions, their data read from the local files.
    (tmp_path / "tasks" / "hellaswag_local.yaml").write_text(
        f"include: {harness_tasks}/hellaswag/hellaswag.yaml\ntask: hellaswag_local\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    validation: {folder}/hellaswag_val.jsonl\n"
        "training_split: null\n")
    (tmp_path / "tasks" / "lambada_local.yaml").write_text(
        f"include: {harness_tasks}/lambada/lambada_openai.yaml\ntask: lambada_local\ndataset_path: json\n"
        f"dataset_name: null\ndataset_kwargs:\n  data_files:\n    test: {folder}/lambada_test.jsonl\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    out = tmp_path / "harness.json"
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(HARNESS), str(tmp_path / "hf"),
                             str(tmp_path / "tasks"), str(out)], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    harness = json.load(open(out))
    for task, file in (("hellaswag", "hellaswag_val.jsonl"), ("lambada", "lambada_test.jsonl")):
        ours = tmp_path / f"{task}.json"
        score_main(["--task", task, str(folder / file), "--models_dir", models_dir, "--model_name", name,
                    "--json", str(ours), "--quiet"])
        ours = json.load(open(ours))
        theirs = harness["results"][f"{task}_local"]
        for i, item in enumerate(ours["items"]):
            np.testing.assert_allclose(item["loglikelihoods"], harness["samples"][f"{task}_local"][str(i)],
                                       rtol=1e-5, atol=1e-4)
        assert ours["total"]["acc"] == theirs["acc,none"]
        assert ours["total"]["acc_stderr"] == pytest.approx(theirs["acc_stderr,none"])
        if task == "hellaswag":
            assert ours["total"]["acc_norm"] == theirs["acc_norm,none"]
            assert ours["total"]["acc_norm_stderr"] == pytest.approx(theirs["acc_norm_stderr,none"])
        else:
            assert ours["total"]["ppl"] == pytest.approx(theirs["perplexity,none"], rel=1e-5)


# ---------------------------------------------------------------------------------------------------
# train.py --eval_task

def scalars(run_dir):
    import tensorflow as tf

    values = {}
    for event_file in run_dir.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            for value in event.summary.value:
                values[value.tag, event.step] = float(tf.make_ndarray(value.tensor))
    return values


@pytest.mark.slow
def test_train_logs_the_tasks_as_score_gives_them_and_trains_as_without(tiny_model, task_files, tmp_path,
                                                                         capsys):
    import tensorflow as tf

    import train as train_script
    from gpt2_tf.cli.train_loop import run

    models_dir, name, _ = tiny_model
    folder, _ = task_files
    (tmp_path / "train.txt").write_text("The dog runs in the garden with a red ball. " * 40, encoding="utf-8")
    common = ["--dataset", str(tmp_path / "train.txt"), "--steps", "4", "--model_name", name, "--models_dir",
              models_dir, "--checkpoint_dir", str(tmp_path / "ckpt"), "--sample_every", "0", "--batch_size",
              "2", "--seed", "3", "--save_every", "0"]
    tasks = ["--eval_task", f"hellaswag={folder}/hellaswag_val.jsonl", "--eval_task",
             f"lambada={folder}/lambada_test.jsonl", "--eval_every", "2", "--eval_items", "9"]
    run(train_script.parse_args(common + tasks + ["--run_name", "with"]))
    console = capsys.readouterr().out
    run(train_script.parse_args(common + ["--run_name", "without"]))
    for variable, _ in tf.train.list_variables(str(tmp_path / "ckpt" / "with" / "model-4")):
        np.testing.assert_array_equal(
            tf.train.load_variable(str(tmp_path / "ckpt" / "with" / "model-4"), variable),
            tf.train.load_variable(str(tmp_path / "ckpt" / "without" / "model-4"), variable))
    values = scalars(tmp_path / "ckpt" / "with")
    assert {step for tag, step in values if tag == "hellaswag/acc_norm"} == {0, 2, 4}
    assert not any(tag.startswith(("hellaswag", "lambada"))
                   for tag, _ in scalars(tmp_path / "ckpt" / "without"))
    # --eval_items 9: the first 9 items, scored by score.py on the checkpoint of step 4.
    for task, file in (("hellaswag", "hellaswag_val.jsonl"), ("lambada", "lambada_test.jsonl")):
        lines = (folder / file).read_text(encoding="utf-8").splitlines()[:9]
        (tmp_path / file).write_text("\n".join(lines) + "\n", encoding="utf-8")
        figures = score_main(["--task", task, str(tmp_path / file), "--models_dir", models_dir,
                              "--model_name", name, "--checkpoint_dir", str(tmp_path / "ckpt"), "--run_name",
                              "with", "--quiet"])
        for key in ("acc", "acc_norm", "ppl"):
            if key in figures:
                assert values[f"{task}/{key}", 4] == pytest.approx(figures[key], rel=1e-5), key
    assert "hellaswag acc = " in console and "(9 items)" in console


@pytest.mark.parametrize("flags, message", [
    (["--eval_task", "hellaswag"], "expected TASK=FILE"),
    (["--eval_task", "mmlu=x.jsonl"], "TASK one of hellaswag, hellaswag_llmc, lambada"),
    (["--eval_task", "lambada={tmp}/missing.jsonl"], "cannot read"),
])
def test_train_refuses_bad_eval_tasks_in_one_line(tiny_model, tmp_path, flags, message):
    models_dir, name, _ = tiny_model
    (tmp_path / "train.txt").write_text("Some text. " * 50, encoding="utf-8")
    before = snapshot(tmp_path)
    result = run_tool("train.py", "--dataset", str(tmp_path / "train.txt"), "--models_dir", models_dir,
                      "--model_name", name, "--checkpoint_dir", str(tmp_path / "ckpt"),
                      *[f.replace("{tmp}", str(tmp_path)) for f in flags])
    assert_refused(result, "train.py", tmp_path, before, message)
