"""Optimizers for training, and their state as plain arrays (for checkpoints that resume exactly).

`make_optimizer` is the one place that turns a command-line name into a Keras optimizer:

* `adam`: the original's `tf.train.AdamOptimizer` (beta 0.9 / 0.999, epsilon 1e-8 instead of Keras'
  1e-7; Keras uses the same epsilon-hat update as TF1).
* `sgd`: plain gradient descent, as `tf.train.GradientDescentOptimizer` (no momentum).
* `adamw`: Adam with decoupled weight decay (beta 0.9 / 0.95, as usual for training GPT models from
  scratch), for --init scratch.
* `adafactor`: Keras' Adafactor (its defaults, its update), but storing only the factored second
  moments of each matrix (a row and a column vector). Keras' own class also keeps a full-size copy
  of the reconstructed second moment for every weight, which costs as much memory as the weights;
  here it is recomputed in each update instead. So the optimizer state is tiny, as with SGD.

With float16 training the optimizer is wrapped in a LossScaleOptimizer (dynamic loss scaling).
"""

import math

import keras

OPTIMIZERS = ("adam", "sgd", "adafactor", "adamw")

DISPLAY_NAMES = {"adam": "Adam", "sgd": "SGD", "adafactor": "Adafactor", "adamw": "AdamW"}


def make_optimizer(name, learning_rate, loss_scaling=False, weight_decay=0.1):
    """A Keras optimizer for `name` (one of OPTIMIZERS).

    learning_rate: a number or a schedule (`learning_rate_schedule`). weight_decay: for adamw only
    (decoupled, as in the AdamW paper; exclude variables with `exclude_from_weight_decay`). Gradient
    clipping is train.TrainStep's (`grad_clip`): Keras' own clips each replica's gradients before
    they are summed.
    """
    if name == "adam":
        optimizer = keras.optimizers.Adam(learning_rate, beta_1=0.9, beta_2=0.999, epsilon=1e-8)
    elif name == "sgd":
        optimizer = keras.optimizers.SGD(learning_rate)
    elif name == "adafactor":
        optimizer = FactoredAdafactor(learning_rate)
    elif name == "adamw":
        optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay, beta_1=0.9,
                                           beta_2=0.95, epsilon=1e-8)
    else:
        raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
    if loss_scaling:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


class FactoredAdafactor(keras.optimizers.Adafactor):
    """keras.optimizers.Adafactor with the same updates but no full-size state for matrices.

    For a weight of 2 or more dimensions [..., n, m] it stores r [..., n] and c [..., m] (the running
    means of the squared gradient over rows and columns); the second-moment estimate
    v = r / mean(r) x c, which Keras keeps as a variable of the weight's size, is a temporary here.
    Vectors keep their full v [n], as in Keras.
    """

    def build(self, var_list):
        if self.built:
            return
        keras.optimizers.Optimizer.build(self, var_list)  # iterations, learning rate (not Adafactor's)
        self._r, self._c, self._v = [], [], []
        for var in var_list:
            if len(var.shape) < 2:
                self._r.append(None)
                self._c.append(None)
                self._v.append(self.add_variable_from_reference(var, name="velocity"))
            else:
                self._r.append(self.add_variable(shape=var.shape[:-1], dtype=var.dtype,
                                                 name=f"{var.path.replace('/', '_')}_row"))
                self._c.append(self.add_variable(shape=var.shape[:-2] + (var.shape[-1],), dtype=var.dtype,
                                                 name=f"{var.path.replace('/', '_')}_column"))
                self._v.append(None)

    def update_step(self, gradient, variable, learning_rate):
        ops = keras.ops
        index = self._get_variable_index(variable)
        r, c, v = self._r[index], self._c[index], self._v[index]
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        step = ops.cast(self.iterations + 1, variable.dtype)
        if self.relative_step:
            lr = ops.minimum(lr, 1 / ops.sqrt(step))
        rho = ops.minimum(lr, 1 / ops.sqrt(step))
        alpha = ops.maximum(ops.cast(self.epsilon_2, variable.dtype), self._rms(variable)) * rho
        squared = ops.square(gradient) + self.epsilon_1
        beta_2 = 1 - ops.power(step, self.beta_2_decay)
        if v is None:
            self.assign(r, beta_2 * r + (1 - beta_2) * ops.mean(squared, axis=-1))
            self.assign(c, beta_2 * c + (1 - beta_2) * ops.mean(squared, axis=-2))
            estimate = (ops.expand_dims(r / ops.mean(r, axis=-1, keepdims=True), -1)
                        * ops.expand_dims(c, -2))
        else:
            self.assign(v, beta_2 * v + (1 - beta_2) * squared)
            estimate = v
        u = gradient / ops.sqrt(estimate)
        u = u / ops.maximum(1.0, self._rms(u) / self.clip_threshold)
        self.assign_sub(variable, alpha * u)


def _state_variables(optimizer):
    """The optimizer's variables that make up its state: all but the learning rate.

    The learning rate is left out so that a run resumed with another --learning_rate uses the new one.
    """
    return [v for v in optimizer.variables if v.name != "learning_rate"]


def optimizer_state(optimizer):
    """The optimizer's state as a list of (path, tensor), in a fixed order.

    The tensors are the variables' values as they are, not copies, so that saving them takes no
    memory beyond the state itself. The optimizer must be built. The order follows the variables it
    was built on, so the state can be loaded back into an optimizer of the same kind built on the
    same variables.
    """
    return [(v.path, keras.ops.convert_to_tensor(v)) for v in _state_variables(optimizer)]


def describe_state(optimizer):
    """[(path, shape)] of the state variables: two optimizers with equal descriptions are compatible."""
    return [(v.path, list(v.shape)) for v in _state_variables(optimizer)]


def same_shape(a, b):
    """Whether two state tensors of these shapes fit each other: equal but for axes of size 1.

    Runs saved when the Conv1D weights were kept as [1, nx, nf] (now [nx, nf]) thus resume exactly.
    """
    return [d for d in a if d != 1] == [d for d in b if d != 1]


def state_mismatch(optimizer, shapes):
    """Why state tensors of these shapes (in `optimizer_state`'s order) do not fit a built optimizer,
    or None when they do."""
    variables = _state_variables(optimizer)
    if len(variables) != len(shapes):
        return f"optimizer state has {len(shapes)} tensors, the optimizer {len(variables)}"
    for variable, shape in zip(variables, shapes):
        if not same_shape(variable.shape, shape):
            return (f"optimizer state for {variable.path} has shape {list(shape)}, "
                    f"expected {list(variable.shape)}")
    return None


def load_optimizer_state(optimizer, arrays):
    """Assign arrays (as from `optimizer_state`, same order) to a built optimizer, one at a time.

    `arrays` is any sequence; one that reads each array when it is asked for (as `load_train_state`
    gives) keeps at most one of them in memory. Check their shapes first with `state_mismatch`.
    """
    for variable, value in zip(_state_variables(optimizer), arrays):
        variable.assign(keras.ops.reshape(value, variable.shape))


class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak` over `warmup` updates, then a cosine decay to `minimum` at update
    `decay_steps`, and `minimum` after that."""

    def __init__(self, peak, warmup, decay_steps, minimum):
        self.peak = peak
        self.warmup = warmup
        self.decay_steps = decay_steps
        self.minimum = minimum

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        warm = self.peak * (step + 1) / max(self.warmup, 1)
        progress = keras.ops.clip((step - self.warmup) / max(self.decay_steps - self.warmup, 1), 0.0, 1.0)
        cosine = self.minimum + 0.5 * (self.peak - self.minimum) * (1 + keras.ops.cos(math.pi * progress))
        return keras.ops.where(step < self.warmup, warm, cosine)

    def get_config(self):
        return {"peak": self.peak, "warmup": self.warmup, "decay_steps": self.decay_steps,
                "minimum": self.minimum}


def learning_rate_schedule(learning_rate, warmup_steps=0, decay_steps=None, min_lr=None):
    """The learning rate for make_optimizer: constant (the original's), or with a linear warm-up over
    `warmup_steps` and, if min_lr is given, a cosine decay to it at update `decay_steps`."""
    if not warmup_steps and min_lr is None:
        return learning_rate
    if min_lr is None:
        min_lr, decay_steps = learning_rate, warmup_steps
    return WarmupCosine(learning_rate, warmup_steps, decay_steps, min_lr)
