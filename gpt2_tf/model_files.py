"""Where a model's files are, found before TensorFlow loads: a released model (`models/124M`) or the
newest checkpoint of a training run (`checkpoint/run1`), with its hparams and tokenizer; and `load`,
which builds the model from them. Only `load` imports TensorFlow (when it is called).
"""

import dataclasses
import os

from gpt2_tf.checkpoint_files import CheckpointError, check_intact, latest_prefix
from gpt2_tf.encoder import get_encoder
from gpt2_tf.hparams import HParams, load_hparams, missing_model, model_dir
from gpt2_tf.lora import read_record

LITERT_FILE = "model.tflite"  # a LiteRT model folder's generation signatures (convert.py --to litert)
LITERT_SCORE_FILE = "score.tflite"  # and its scoring signatures


class ModelMissing(CheckpointError):
    """The model or run that the flags name is not there (bad usage, not a damaged file)."""


@dataclasses.dataclass
class ModelFiles:
    """A model's files: the checkpoint prefix of its weights (or a LiteRT model folder's
    model.tflite), its hparams, and the folder of its tokenizer (encoder.json, vocab.bpe); `name` is
    the run's or the model's, for titles."""

    weights: str
    hparams: HParams
    tokenizer: str
    name: str
    lora: "tuple | None" = None  # a LoRA run: (base checkpoint, lora.LoraConfig); `weights` its factors

    @property
    def litert(self):
        """Whether the weights are a LiteRT model (run with litert_runtime, without TensorFlow)."""
        return self.weights.endswith(".tflite")

    @property
    def litert_scores(self):
        """A LiteRT model folder's file of the scoring signatures (which score.py runs)."""
        return os.path.join(os.path.dirname(self.weights), LITERT_SCORE_FILE)

    def encoder(self):
        """The model's tokenizer (an encoder.Encoder)."""
        return get_encoder(os.path.basename(self.tokenizer), os.path.dirname(self.tokenizer) or ".")


def find_model(model_name="124M", models_dir="models", run_name=None, checkpoint_dir="checkpoint"):
    """ModelFiles of a released model (or a LiteRT model folder, made by convert.py --to litert), or
    with run_name of the newest checkpoint of `checkpoint_dir/run_name` (its own hparams.json and
    tokenizer when it has them, as train.py writes them, else the base model's). Raises ModelMissing
    for what is not there, CheckpointError for a damaged checkpoint."""
    base = model_dir(model_name, models_dir)
    litert = os.path.join(base, LITERT_FILE)
    if run_name is None and os.path.isfile(litert) and not os.path.exists(os.path.join(base, "checkpoint")):
        problem = missing_model(model_name, models_dir, ("hparams.json", "encoder.json", "vocab.bpe"))
        if problem:
            raise ModelMissing(problem)
        weights, folder, tokenizer = litert, base, base
    elif run_name is None:
        problem = missing_model(model_name, models_dir, ("hparams.json", "checkpoint", "encoder.json",
                                                         "vocab.bpe"))
        if problem:
            raise ModelMissing(problem)
        weights, folder, tokenizer = _prefix(base), base, base
    else:
        folder = os.path.join(checkpoint_dir, run_name)
        if not os.path.isdir(folder):
            raise ModelMissing(f"no training run {run_name} in {checkpoint_dir} "
                               f"({existing_runs(checkpoint_dir)}; see --run_name and --checkpoint_dir)")
        if not os.path.exists(os.path.join(folder, "checkpoint")):
            raise ModelMissing(f"training run {folder} has no checkpoint yet (train.py saves one every "
                               "--save_every steps and when it stops)")
        weights = _prefix(folder)
        own = [os.path.exists(os.path.join(folder, n)) for n in ("hparams.json", "encoder.json")]
        if not all(own):
            problem = missing_model(model_name, models_dir, ("hparams.json", "encoder.json", "vocab.bpe"))
            if problem:  # a run of the original trainer: its base model's files are needed
                raise ModelMissing(f"training run {folder} has no hparams.json or tokenizer of its own, and "
                                   f"its base model is not there: {problem} (see --model_name)")
        tokenizer = folder if own[1] else base
        folder = folder if own[0] else base
    try:
        hparams = load_hparams(folder)
    except (OSError, ValueError) as e:
        raise ModelMissing(str(e)) from None
    adapted = read_record(os.path.dirname(weights)) if run_name is not None else None
    if not weights.endswith(".tflite"):
        check_intact(weights)
    if adapted is not None:
        check_intact(adapted[0])
    return ModelFiles(weights=weights, hparams=hparams, tokenizer=tokenizer, name=run_name or model_name,
                      lora=adapted)


def _prefix(folder):
    try:
        return latest_prefix(folder)
    except ValueError as e:
        raise ModelMissing(str(e)) from None


def existing_runs(checkpoint_dir):
    """The training runs in `checkpoint_dir`, as a phrase: "it has run1, run2" or "it holds no runs"."""
    folder = os.path.expanduser(checkpoint_dir)
    if not os.path.isdir(folder):
        return f"{checkpoint_dir} does not exist"
    runs = sorted(name for name in os.listdir(folder)
                  if os.path.exists(os.path.join(folder, name, "checkpoint")))
    return f"it has {', '.join(runs)}" if runs else "it holds no runs"


def load(files, dtype=None):
    """(model, hparams, encoder) of ModelFiles `files` (a LoRA run's: its base with the update merged);
    `dtype` as GPT2's (e.g. "bfloat16"). Weights that are not all finite are a CheckpointError."""
    from gpt2_tf.checkpoint import load_model, nonfinite, read
    from gpt2_tf.lora import merge_into

    base = files.lora[0] if files.lora else files.weights
    model, hparams = load_model(base, hparams=files.hparams, **({"dtype": dtype} if dtype else {}))
    if files.lora:  # the base model with the run's LoRA update merged into its weights
        merge_into(model, read(files.weights), files.lora[1])
    damaged = nonfinite(model)
    if damaged:
        raise CheckpointError(f"{files.weights} is damaged: {damaged}; use an earlier checkpoint")
    return model, hparams, files.encoder()
