"""Original-format checkpoints: restore by TF1 name, clear errors, save in the same format."""

import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from tf1_model import TINY_HPARAMS

from gpt2_tf import checkpoint, checkpoint_files, load_model
from gpt2_tf.checkpoint import CheckpointError
from gpt2_tf.model import GPT2


def tiny_model_path(tiny_model):
    models_dir, name, _ = tiny_model
    return os.path.join(models_dir, name)


def test_restore_reads_every_tensor_by_name(tiny_model):
    _, _, weights = tiny_model
    model, hparams = load_model(tiny_model_path(tiny_model))
    assert hparams.to_dict() == TINY_HPARAMS
    by_name = model.variables_by_name()
    assert set(by_name) == set(weights)
    for name, value in weights.items():
        np.testing.assert_array_equal(by_name[name].numpy(), value.reshape(by_name[name].shape))


def test_load_model_accepts_folder_and_prefix(tiny_model):
    path = tiny_model_path(tiny_model)
    a, _ = load_model(path)
    b, _ = load_model(os.path.join(path, "model.ckpt"))
    np.testing.assert_array_equal(a.wte.numpy(), b.wte.numpy())


def test_missing_unexpected_and_misshaped_tensors_are_named(tiny_model, tmp_path):
    tensors = checkpoint.read(tiny_model_path(tiny_model))
    del tensors["model/h1/mlp/c_fc/b"]
    tensors["model/extra"] = np.zeros(3, np.float32)
    tensors["model/ln_f/g"] = np.zeros(5, np.float32)
    prefix = str(tmp_path / "bad")
    checkpoint.save_tensors(tensors, prefix)
    model = GPT2(TINY_HPARAMS)
    before = model.wte.numpy().copy()
    with pytest.raises(CheckpointError) as e:
        checkpoint.restore(model, prefix)
    message = str(e.value)
    assert "missing model/h1/mlp/c_fc/b" in message
    assert "unexpected model/extra" in message
    assert "model/ln_f/g has shape [5], the model needs [32]" in message
    assert "\n" not in message
    np.testing.assert_array_equal(model.wte.numpy(), before)


def test_a_checkpoint_of_another_shape_is_one_short_line(tiny_model):
    models_dir, name, _ = tiny_model
    other = GPT2({**TINY_HPARAMS, "n_layer": 3, "n_embd": 48})
    with pytest.raises(CheckpointError) as e:
        checkpoint.restore(other, os.path.join(models_dir, name))
    prefix = os.path.join(models_dir, name, "model.ckpt")
    assert str(e.value) == (f"checkpoint {prefix} does not fit the model: the checkpoint is 2 layers x 32, "
                            "n_ctx 64, n_vocab 50257, the model 3 layers x 48, n_ctx 64, n_vocab 50257")


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        checkpoint.latest(str(tmp_path))
    with pytest.raises(CheckpointError, match="no checkpoint"):
        checkpoint.latest(str(tmp_path / "model-5"))


def test_save_restore_round_trip_keeps_names_and_values(tiny_model, tmp_path):
    model, _ = load_model(tiny_model_path(tiny_model))
    run = tmp_path / "run"
    prefix = checkpoint.save(model, str(run / "model-7"))
    assert sorted(os.listdir(run)) == ["checkpoint", "model-7.data-00000-of-00001", "model-7.index"]
    with open(run / "checkpoint") as f:
        assert f.read().splitlines()[0] == 'model_checkpoint_path: "model-7"'
    # Read back with TensorFlow's own reader: same names, shapes, values.
    reader = tf.train.load_checkpoint(str(run))
    shapes = model.hparams.variable_shapes()
    assert reader.get_variable_to_shape_map() == shapes
    assert shapes["model/h1/attn/c_proj/w"] == [1, 32, 32]
    for name, variable in model.variables_by_name().items():
        np.testing.assert_array_equal(reader.get_tensor(name), variable.numpy().reshape(shapes[name]))
    other = GPT2(TINY_HPARAMS)
    assert checkpoint.restore(other, str(run)) == prefix
    np.testing.assert_array_equal(other.variables_by_name()["model/h1/attn/c_proj/w"].numpy(),
                                  model.variables_by_name()["model/h1/attn/c_proj/w"].numpy())


def test_saved_checkpoint_loads_in_tf1_graph_mode(tiny_model, tmp_path):
    """Tools written for OpenAI's checkpoints restore ours with a TF1 Saver."""
    model, _ = load_model(tiny_model_path(tiny_model))
    checkpoint.save(model, str(tmp_path / "model-1"))
    expected = model.wte.numpy()
    graph = tf.Graph()
    with graph.as_default():
        wte = tf.compat.v1.get_variable("model/wte", [50257, 32])
        saver = tf.compat.v1.train.Saver([wte])
        with tf.compat.v1.Session(graph=graph) as sess:
            saver.restore(sess, tf.compat.v1.train.latest_checkpoint(str(tmp_path)))
            np.testing.assert_array_equal(sess.run(wte), expected)


def test_state_file_keeps_the_newest(tiny_model, tmp_path):
    model, _ = load_model(tiny_model_path(tiny_model))
    for step in range(1, 5):
        checkpoint.save(model, str(tmp_path / f"model-{step}"), max_to_keep=2)
    assert checkpoint_files.read_state_file(str(tmp_path)) == ["model-3", "model-4"]
    assert not os.path.exists(tmp_path / "model-1.index")
    assert os.path.exists(tmp_path / "model-3.index")
    assert checkpoint.latest(str(tmp_path)) == str(tmp_path / "model-4")


def test_released_state_file_with_relative_path_is_followed(tiny_model, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_path(tiny_model), copy)
    assert checkpoint.latest(str(copy)) == str(copy / "model.ckpt")
