"""The devices a command runs on: the tf.distribute strategy of a training run, which processes write,
the compile mode each device is fastest in, and what is said and set about GPUs (their names and
memory, bfloat16 that only newer ones compute, memory taken as it is needed by the tools that do not
train).

TensorFlow is imported here; `gpu_memory` reads nvidia-smi and needs neither TensorFlow nor a GPU.
"""

import os
import shutil
import subprocess

import tensorflow as tf


def make_strategy(kind="auto"):
    """The tf.distribute strategy for --distribute.

    auto: a TPU when TPU_NAME is set or this is a TPU VM (/dev/accel0); several workers when TF_CONFIG
    is set; all GPUs when there are several; else the default (one device). mirrored: every GPU, or
    with none every logical CPU device (for testing). multiworker: MultiWorkerMirroredStrategy from
    TF_CONFIG. tpu: TPUStrategy, of TPU_NAME's TPU, else the TPU VM's own. Must run before any other
    TensorFlow work in the process (multi-worker set-up needs that).
    """
    if kind == "auto":
        if os.environ.get("TPU_NAME") or os.path.exists("/dev/accel0"):
            kind = "tpu"
        elif os.environ.get("TF_CONFIG"):
            kind = "multiworker"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            kind = "mirrored"
        else:
            kind = "none"
    if kind == "none":
        return tf.distribute.get_strategy()
    if kind == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if kind == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(os.environ.get("TPU_NAME") or "local")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"unknown strategy {kind!r}")


def num_workers(strategy):
    """How many processes (machines) train together: 1 unless the cluster has several workers."""
    resolver = strategy.cluster_resolver
    if resolver is None or not resolver.task_type:
        return 1
    spec = resolver.cluster_spec().as_dict()
    return max(1, len(spec.get("worker", [])) + len(spec.get("chief", [])))


def is_chief(strategy):
    """Whether this process writes checkpoints, samples and summaries (the first worker does)."""
    resolver = strategy.cluster_resolver
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def default_compile():
    """The compile mode when --compile is auto: XLA on GPU and TPU, a TF graph on CPU.

    On CPU, TensorFlow's own kernels (oneDNN matmuls) train faster than XLA's (bench/train.py).
    """
    accelerated = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU")
    return "xla" if accelerated else "graph"


def summary(strategy, compile_mode):
    """One line on what a run trains on: "2 x NVIDIA A100-SXM4-80GB (GPU), XLA"; a GPU that TensorFlow
    could not use (a CUDA library missing) shows as a CPU run, which this line makes plain."""
    try:
        devices = strategy.extended.worker_devices
    except RuntimeError:  # the default strategy: the first GPU when there is one
        devices = [d.name for d in tf.config.list_logical_devices("GPU")[:1]] or ["CPU:0"]
    kind = "TPU" if "TPU" in devices[0].upper() else "GPU" if "GPU" in devices[0].upper() else "CPU"
    name = kind
    if kind == "GPU":
        details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
        name = f"{details.get('device_name', 'GPU')} (GPU)"
    workers = num_workers(strategy)
    where = f" on each of {workers} workers" if workers > 1 else ""
    mode = "XLA" if compile_mode == "xla" else "TensorFlow graph"
    return f"{len(devices)} x {name}{where}, {mode}"


def emulated_bfloat16():
    """The name and compute capability of a GPU that has no bfloat16 arithmetic (below 8.0: T4, V100),
    where bfloat16 is emulated, slower than float32; None when every GPU has it (or there is none)."""
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        capability = details.get("compute_capability")
        if capability and tuple(capability) < (8, 0):
            name = details.get("device_name", gpu.name)
            return f"{name} (compute capability {capability[0]}.{capability[1]})"
    return None


def grow_gpu_memory():
    """Let TensorFlow take GPU memory as it needs it, instead of nearly all of it at start, so that a
    sample.py, score.py or lens.py runs beside a training run. Call before any GPU work. Left as it is
    when TF_FORCE_GPU_ALLOW_GROWTH is set (the user decides)."""
    if "TF_FORCE_GPU_ALLOW_GROWTH" in os.environ:
        return
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # the GPU is initialised already
            pass


def device_memory():
    """Bytes of memory a replica has: the smallest GPU's when there are GPUs (None where nvidia-smi
    cannot tell), none known on a TPU, else the host's available memory."""
    from gpt2_tf.cli import available_memory

    if tf.config.list_physical_devices("GPU"):
        return gpu_memory()
    if tf.config.list_logical_devices("TPU"):
        return None
    return available_memory()


def gpu_memory(query=None):
    """The total memory of the smallest GPU, in bytes, as nvidia-smi reports it, or None. `query`: a
    function returning nvidia-smi's output (for tests)."""
    def ask():
        if not shutil.which("nvidia-smi"):
            return ""
        done = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=30)
        return done.stdout if done.returncode == 0 else ""

    try:
        sizes = [int(line.strip()) for line in (query or ask)().splitlines() if line.strip()]
    except (ValueError, OSError, subprocess.SubprocessError):
        return None
    return min(sizes) * (1 << 20) if sizes else None

