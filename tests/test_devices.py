"""The accelerator path, made right on a CPU: strategies of one replica, float16 across replicas, clipping
by the global norm of the summed gradient, float16 layer norm, and the ops a GPU runs. Several replicas
are two logical CPU devices, in a process of their own."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from gpt2_tf import checkpoint, ops
from gpt2_tf.model import norm, plain_formulas
from gpt2_tf.optim import make_optimizer
from gpt2_tf.train_step import TrainStep, build_model, trained_variables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A script run with two logical CPUs: it defines `updates(strategy, ...)`, which makes the tiny model,
# applies TrainStep updates and returns what they did, and prints the JSON of `RESULT`.
REPLICAS = """
import json, sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from gpt2_tf import checkpoint
from gpt2_tf.optim import make_optimizer
from gpt2_tf.train_step import TrainStep, build_model, trained_variables

MODEL = sys.argv[1]
TOKENS = np.random.RandomState(4).randint(0, 50257, (1, 4, 64)).astype(np.int32)


class Planted(TrainStep):
    '''A TrainStep whose replica 1 sees an infinite gradient when `plant` is set.'''
    plant = False

    def _micro_batch(self, inputs, labels):
        total, grads = super()._micro_batch(inputs, labels)
        if self.plant:
            on_one = tf.distribute.get_replica_context().replica_id_in_sync_group == 1
            grads[0] = grads[0] * tf.cast(tf.where(on_one, np.inf, 1.0), grads[0].dtype)
        return total, grads


def updates(strategy, n=1, optimizer="sgd", learning_rate=1.0, precision=None, grad_clip=None, plant=False):
    with strategy.scope():
        model = build_model(checkpoint.load_model(MODEL)[1], precision)
        variables = trained_variables(model)
        opt = make_optimizer(optimizer, learning_rate, loss_scaling=precision == "fp16")
        opt.build(list(variables.values()))
    checkpoint.restore(model, MODEL)
    before = {k: v.numpy() for k, v in variables.items()}
    step = Planted(model, opt, variables.values(), strategy, 4, 1, 64, loss_scaling=precision == "fp16",
                   grad_clip=grad_clip)
    step.plant = plant
    finite = [step(TOKENS, TOKENS)[1] for _ in range(n)]
    after = {k: v.numpy() for k, v in variables.items()}
    moved = float(np.sqrt(sum(((after[k] - before[k]).astype(np.float64) ** 2).sum() for k in after)))
    return {"finite": finite, "moved": moved,
            "all_finite": bool(all(np.isfinite(a).all() for a in after.values())),
            "iterations": int(opt.iterations.numpy()),
            "scale": float(opt.dynamic_scale.numpy()) if precision == "fp16" else None,
            "weights": {k: after[k].ravel()[:50].tolist() for k in ("model/wte", "model/h0/attn/c_attn/w")}}


one, two = tf.distribute.get_strategy(), tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
"""


def replicas(tiny_model, code):
    """Run REPLICAS followed by `code` (which sets RESULT); returns RESULT."""
    models_dir, name, _ = tiny_model
    script = REPLICAS + textwrap.dedent(code) + "\nprint(json.dumps(RESULT))\n"
    done = subprocess.run([sys.executable, "-c", script, os.path.join(models_dir, name)], capture_output=True,
                          text=True, cwd=ROOT, timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.slow
def test_clipping_and_float16_skips_see_the_sum_over_replicas(tiny_model):
    """--grad_clip clips the norm of the gradient summed over the replicas (each replica's own was
    clipped before: 37% more than one device); an overflow on replica 1 alone skips the float16 update
    everywhere and halves the loss scale (the weights became NaN before), and is not counted."""
    result = replicas(tiny_model, """
        RESULT = {"clip_one": updates(one, grad_clip=0.01), "clip_two": updates(two, grad_clip=0.01),
                  "fp16": updates(two, optimizer="adam", learning_rate=1e-3, precision="fp16", plant=True),
                  "fp16_clean": updates(two, optimizer="adam", learning_rate=1e-3, precision="fp16")}
    """)
    # SGD at rate 1: the update is the (clipped) gradient.
    assert result["clip_one"]["moved"] == pytest.approx(0.01, rel=1e-4)
    assert result["clip_two"]["moved"] == pytest.approx(0.01, rel=1e-4)
    for name, values in result["clip_one"]["weights"].items():
        np.testing.assert_allclose(result["clip_two"]["weights"][name], values, rtol=0, atol=1e-6,
                                   err_msg=name)
    planted = result["fp16"]
    assert planted["finite"] == [False] and planted["all_finite"] and planted["moved"] == 0
    assert planted["iterations"] == 0 and planted["scale"] == 2.0**14
    clean = result["fp16_clean"]
    assert clean["finite"] == [True] and clean["iterations"] == 1 and clean["scale"] == 2.0**15
    assert clean["moved"] > 0


@pytest.mark.slow
def test_several_replicas_skip_a_nonfinite_update_as_one_device_does(tiny_model):
    result = replicas(tiny_model, """
        RESULT = {"two": updates(two, optimizer="adam", learning_rate=1e-3, plant=True)}
    """)
    assert result["two"]["finite"] == [False] and result["two"]["moved"] == 0
    assert result["two"]["iterations"] == 0 and result["two"]["all_finite"]


@pytest.mark.parametrize("jit_compile", [False, True])
def test_a_strategy_of_one_replica_trains_as_no_strategy(tiny_model, jit_compile):
    """MirroredStrategy on one device (one GPU, a one-worker cluster) once crashed at its first update
    (merge_call inside a condition); it now updates as no strategy does, and skips a non-finite step."""
    models_dir, name, _ = tiny_model
    path = os.path.join(models_dir, name)
    tokens = np.random.RandomState(6).randint(0, 50257, (1, 2, 64)).astype(np.int32)
    results = []
    for strategy in (tf.distribute.get_strategy(), tf.distribute.MirroredStrategy(["/cpu:0"])):
        with strategy.scope():
            model = build_model(checkpoint.load_model(path)[1])
            variables = trained_variables(model)
            opt = make_optimizer("adam", 1e-3)
            opt.build(list(variables.values()))
        checkpoint.restore(model, path)
        step = TrainStep(model, opt, variables.values(), strategy, 2, 1, 64, jit_compile=jit_compile)
        assert step(tokens, tokens)[1]
        gain = variables["model/ln_f/g"]
        good = gain.numpy()
        gain.assign(np.full_like(good, np.nan))
        assert not step(tokens, tokens)[1] and int(opt.iterations.numpy()) == 1
        gain.assign(good)
        results.append({k: v.numpy() for k, v in variables.items()})
    for name_ in results[0]:
        np.testing.assert_allclose(results[1][name_], results[0][name_], rtol=0, atol=1e-6, err_msg=name_)


def test_float16_layer_norm_is_computed_in_float32():
    """An element 300 from its row's mean made the float16 variance infinite, and the output exactly b;
    TensorFlow's CPU kernels also summed the squares in float16 (a row of RMS above ~9.2 broke)."""
    rng = np.random.default_rng(0)
    x = rng.normal(0, 12, (3, 64)).astype(np.float32)  # RMS 12: a float16 sum of squares overflows
    x[1, 5] = 300.0
    g, b = rng.normal(1, 0.1, 64).astype(np.float32), rng.normal(0, 0.1, 64).astype(np.float32)
    x64 = x.astype(np.float64)
    expected = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5) * g + b
    half = [tf.constant(a, tf.float16) for a in (x, g, b)] + [tf.constant(1e-5, tf.float16)]
    for compute in (lambda: ops.norm(*half), lambda: norm(*half)):
        for jit in (False, True):
            y = tf.function(compute, jit_compile=jit)()
            assert y.dtype == tf.float16
            np.testing.assert_allclose(y.numpy().astype(np.float64), expected, rtol=0, atol=0.02)
    with plain_formulas():
        y = tf.function(lambda: norm(*half))()
    np.testing.assert_allclose(y.numpy().astype(np.float64), expected, rtol=0, atol=0.02)


def test_quiet_mode_lets_through_a_gpu_that_cannot_be_used():
    """A broken CUDA install makes TensorFlow fall back to the CPU; its one warning about it is kept
    when every other log line is not."""
    code = ("import os\nfrom gpt2_tf.cli import quiet_tensorflow\nquiet_tensorflow()\n"
            "os.write(2, b'I0000 00:00:1.5    42 port.cc:153] oneDNN custom operations are on.\\n')\n"
            "os.write(2, b'W0000 00:00:1.6    42 gpu_device.cc:2344] Cannot dlopen some GPU libraries. "
            "Skipping registering GPU devices...\\n')\n"
            "import time; time.sleep(0.5)\n")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=60)
    assert done.returncode == 0 and "oneDNN" not in done.stderr
    assert "Cannot dlopen some GPU libraries" in done.stderr


def test_the_memory_estimate_counts_gradients_under_xla_and_reads_the_gpu():
    import train as train_script
    from gpt2_tf.cli.train_checks import memory_warning
    from gpt2_tf.devices import gpu_memory
    from gpt2_tf.hparams import released

    gib = 1 << 30
    args = train_script.parse_args(["--dataset", "x", "--model_name", "774M", "--memory_saving_gradients"])
    # 774M with Adam: weights 2.9 + state 5.8 GiB; under XLA the 2.9 GiB of gradients come on top.
    assert memory_warning(released("774M"), args, available=10 * gib) is None
    warning = memory_warning(released("774M"), args, available=10 * gib, xla=True)
    assert "gradients 2.9" in warning and "10.0 GiB of memory is available" in warning
    assert memory_warning(released("774M"), args, available=None) is None  # unknown: no guess
    assert gpu_memory(lambda: "15360\n81559\n") == 15360 << 20  # the smallest GPU (a T4 beside an A100)
    assert gpu_memory(lambda: "") is None and gpu_memory(lambda: "N/A\n") is None


def arg_sizes(op):
    """{argument name: elements of its largest tensor} of an op's inputs and outputs, by its OpDef."""
    sizes = {}
    for args, tensors in ((op.op_def.input_arg, list(op.inputs)), (op.op_def.output_arg, list(op.outputs))):
        for arg in args:
            if arg.number_attr:
                n = op.get_attr(arg.number_attr)
            elif arg.type_list_attr:
                n = len(op.get_attr(arg.type_list_attr))
            else:
                n = 1
            taken, tensors = tensors[:n], tensors[n:]
            sizes[arg.name] = max((t.shape.num_elements() or 0 for t in taken), default=0)
    return sizes


def gpu_kernel_problems(graph, big):
    """The ops of a traced graph (with the bodies of its loops and conditions) that a GPU would run on
    the CPU or keep in host memory while they hold a tensor of `big` elements or more: [(op type,
    dtype)]. Read from the kernels this TensorFlow wheel registers for GPUs."""
    from tensorflow.python.framework import kernels

    registered = {}
    problems = []

    def walk(g):
        for op in g.get_operations():
            for attr in ("body", "cond", "then_branch", "else_branch", "f"):
                try:
                    function = g._get_function(op.get_attr(attr).name)
                except (ValueError, AttributeError):
                    continue
                if function is not None:
                    walk(function.graph)
            sizes = [t.shape.num_elements() or 0 for t in list(op.inputs) + list(op.outputs)]
            if max(sizes, default=0) < big:
                continue
            if op.type not in registered:
                registered[op.type] = [k for k in kernels.get_registered_kernels_for_op(op.type).kernel
                                       if k.device_type in ("GPU", "DEFAULT")]
            attrs = op.node_def.attr
            fits = [k for k in registered[op.type]
                    if all(c.name not in attrs or attrs[c.name].type in c.allowed_values.list.type
                           for c in k.constraint)]
            dtype = tf.as_dtype(attrs["T"].type).name if "T" in attrs and attrs["T"].type else ""
            sizes = arg_sizes(op)
            if not fits or any(sizes.get(arg, 0) >= big for k in fits if k.device_type == "GPU"
                               for arg in k.host_memory_arg):
                problems.append((op.type, dtype))

    walk(graph)
    return problems


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_what_a_gpu_runs_outside_xla_has_gpu_kernels(dtype):
    """Sampling with every filter on, and the ragged cache write, as TensorFlow graphs (sample.py
    --compile graph, a SavedModel's generate_ids under TF Serving): no [B, V] or cache-sized op without a
    GPU kernel for its dtype (TensorScatterUpdate has none for float16 and bfloat16) or kept in host
    memory (int32 reductions and comparisons are, on GPUs)."""
    from gpt2_tf.sample import choose
    from gpt2_tf.score import rank

    logits = tf.TensorSpec([4, 50257], tf.float32)
    keys = tf.TensorSpec([4], tf.int32)
    sample = tf.function(lambda x, k: choose(x, 0.8, 40, 0.9, k, 3)).get_concrete_function(logits, keys)
    assert gpu_kernel_problems(sample.graph, big=50257) == []
    ranks = tf.function(rank).get_concrete_function(logits, tf.TensorSpec([4, 1], tf.int32))  # score, lens
    assert gpu_kernel_problems(ranks.graph, big=50257) == []
    cache = tf.TensorSpec([16, 256, 64], dtype)
    write = tf.function(ops.write_cache).get_concrete_function(cache, tf.TensorSpec([16, 1, 64], dtype),
                                                               tf.TensorSpec([16], tf.int32))
    assert gpu_kernel_problems(write.graph, big=16 * 256 * 64) == []
    rng = np.random.default_rng(1)
    values = tf.constant(rng.normal(size=(16, 256, 64)), dtype)
    new = tf.constant(rng.normal(size=(16, 1, 64)), dtype)
    position = tf.constant(rng.integers(0, 256, 16), tf.int32)
    written = ops.write_cache(values, new, position).numpy()
    expected = values.numpy().copy()
    expected[np.arange(16), position.numpy()] = new.numpy()[:, 0]
    np.testing.assert_array_equal(written, expected)  # the bits moved exactly


def test_the_attention_is_computed_again_under_xla():
    """XLA found the backward pass's recomputation of the attention weights equal to the forward's and
    kept those (7 products fell to 6, 2 exponentials to 1). The recomputation now waits behind an
    optimization barrier with the incoming gradient, which the HLO given to XLA holds; XLA's GPU and
    TPU compilers keep such barriers (CPU's expands them before its CSE, so a CPU still merges).
    bench/gpu_check.py reports the products on the device."""
    import re

    q, k, v, w = (tf.constant(np.random.RandomState(i).randn(2, 4, 128, 64), tf.float32) for i in range(4))
    b = ops.lower_triangle(128)

    def step(q, k, v, w):
        with tf.GradientTape() as tape:
            tape.watch([q, k, v])
            loss = tf.reduce_sum(ops.attend(ops.scaled(q), k, v, b) * w)
        return tape.gradient(loss, [q, k, v])

    hlo = tf.function(step, jit_compile=True).experimental_get_compiler_ir(q, k, v, w)(stage="hlo")
    assert len(re.findall(r" dot\(", hlo)) == 7 and len(re.findall(r"exponential\(", hlo)) == 2
    assert "opt-barrier" in hlo
