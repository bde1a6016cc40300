"""The compiled training update: the model built for training, its trained variables, the original's
input noise, and `TrainStep`, one optimizer update as one compiled function on every replica of a
tf.distribute strategy; `Evaluator`, the sampled validation loss. bench/ and train.py's command
(gpt2_tf/cli/train_loop.py) use them.

Shapes: A = --accumulate_gradients, B = --batch_size (the global batch, over all replicas),
T = n_ctx (the window length), V = n_vocab.
"""

import contextlib

import keras
import numpy as np
import tensorflow as tf

from gpt2_tf.model import GPT2, weights_to_be_loaded
from gpt2_tf.score import loss_sum, window_scores

POLICIES = {None: "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}


def build_model(hparams, mixed_precision=None, memory_saving=False, residual_scaling=False, restored=False):
    """A GPT2 with float32 weights; with mixed_precision 'bf16' or 'fp16' it computes in that type.

    With memory_saving, each block's activations are recomputed in the backward pass
    (`recompute_blocks`). The weights are freshly initialised as GPT-2 was (residual_scaling: the
    residual projections scaled by 1/sqrt(2 n_layer), for training from scratch), or with `restored`
    left as zeros for checkpoint.restore to fill: random values that the checkpoint then replaced left
    a 1558M run holding 8.9 GiB instead of 6.7 once loaded (bench/train_memory.py).
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(POLICIES[mixed_precision])
    try:
        with weights_to_be_loaded() if restored else contextlib.nullcontext():
            model = GPT2(hparams, residual_scaling=residual_scaling)
    finally:
        keras.config.set_dtype_policy(previous)
    if memory_saving:
        recompute_blocks(model)
    return model


def recompute_blocks(model):
    """Keep only each block's input for the backward pass and recompute the rest (tf.recompute_grad).

    This is what the original's memory_saving_gradients (checkpoints at block boundaries) and twremat
    did: the activations inside a block are computed a second time during backpropagation instead of
    being stored. Results are unchanged. Calls with a `past` or return_attention, and `call_with_cache`
    (sampling), are not affected.
    """
    for block in model.blocks:
        block.call = _recomputed(block.call)


def _recomputed(call):
    recomputed = tf.recompute_grad(lambda x: call(x))

    def block_call(x, past=None, return_attention=False):
        if past is None and not return_attention:
            return recomputed(x)
        return call(x, past=past, return_attention=return_attention)

    return block_call


def trained_variables(model, only_transformer_layers=False):
    """{TF1 name: variable} of the variables to train: all, or only the blocks' (names with '/h')."""
    names = model.variables_by_name()
    if only_transformer_layers:
        names = {name: v for name, v in names.items() if "/h" in name}
    return names


def randomize(context, p, n_vocab, rng):
    """The original's input noise: each token is replaced with probability p by a uniform random id.

    context: int array of any shape; rng: numpy RandomState. Returns an int32 array of the same shape.
    """
    if p <= 0:
        return context
    mask = rng.random_sample(context.shape) < p
    noise = rng.randint(0, n_vocab, size=context.shape)
    return np.where(mask, noise, context).astype(np.int32)


class TrainStep:
    """One optimizer update as one compiled function, on every replica of a tf.distribute strategy.

    The loss is the original's, `loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
    labels=context[:, 1:], logits=output['logits'][:, :-1]))` (score.loss_sum, divided by the count).

    `step(inputs, labels)` takes [A, B, T] int32 arrays (A micro-batches of the global batch B) and
    returns (loss, finite): the loss is the mean cross-entropy over the A * B * (T - 1) predictions,
    and whether it and every gradient are finite on every replica. When they are not, the update is
    skipped everywhere: the weights and the optimizer's state and step stay as they were (with loss
    scaling, the scale is halved). The gradient is the mean over the same predictions, so A
    micro-batches of B rows give the update of one batch of A * B rows. Each replica takes its share
    of the B rows; the gradients are summed across replicas, and `grad_clip` clips the global norm of
    that sum (the gradient of the whole update), as on one device.

    In mixed precision the forward and backward passes read `copies`: the trained weights in the
    compute dtype, made at the first step and rewritten by every update. Otherwise each weight would
    be converted at each use and its gradient converted back (on CPU, 1-3% of a bfloat16 update of the
    124M model). The values are those of the conversions. Weights assigned from outside after the
    first step are not seen by it: make a new TrainStep then.
    """

    def __init__(self, model, optimizer, variables, strategy, batch_size, accumulate, n_ctx,
                 jit_compile=False, loss_scaling=False, xla_update=True, grad_clip=None):
        self.model = model
        self.optimizer = optimizer
        self.variables = list(variables)
        self.strategy = strategy
        self.replicas = strategy.num_replicas_in_sync
        self.per_replica = batch_size // self.replicas
        self.accumulate = accumulate
        self.predictions = accumulate * batch_size * (n_ctx - 1)
        self.loss_scaling = loss_scaling
        self.grad_clip = grad_clip
        self._gradients = tf.function(self._micro_batch, jit_compile=jit_compile)
        # With xla_update, without a distribution strategy, the update is compiled with XLA whatever
        # the mode: Keras' optimizers update each variable in several elementwise passes, which XLA
        # fuses into one (on CPU, Adam on 124M takes 0.1 s instead of 0.45 s). But one fused update
        # waits for every gradient, so all of them exist at once; as a graph, each variable is updated
        # as soon as its gradient is ready and the gradient is freed, which lowers the peak (by the
        # size of the weights at most) when memory matters more. Under a strategy (one replica
        # included), Keras all-reduces the gradients inside apply_gradients, which XLA cannot compile
        # on its own.
        self._apply = self._apply_gradients
        if strategy is tf.distribute.get_strategy() and xla_update:
            self._apply = tf.function(self._apply_gradients, jit_compile=True)
        self._step = tf.function(self._distributed_step)
        self.copies = None

    def _make_copies(self):
        """The weights in the compute dtype, when it differs from theirs (mixed precision), else []."""
        dtype = self.model.compute_dtype
        if dtype == self.model.variable_dtype:
            return []
        with self.strategy.scope():
            # Trainable, so that the recomputed blocks of memory saving differentiate them; the same
            # on every replica, so that the first replica's value is the one kept.
            return [tf.Variable(tf.cast(v, dtype), trainable=True, name=f"{v.name}_{dtype}",
                                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
                    for v in self.variables]

    def _reading_copies(self):
        """A Keras StatelessScope in which each trained weight reads as its copy (none without copies).

        The copies are put in the scope's mapping as they are: its constructor would convert them
        to the weights' dtype, and the layers would then convert them back.
        """
        if not self.copies:
            return contextlib.nullcontext()
        scope = keras.StatelessScope()
        for variable, copy in zip(self.variables, self.copies):
            scope.state_mapping[id(variable)] = copy
        return scope

    def _micro_batch(self, inputs, labels):
        """(loss sum, gradients of loss sum / predictions) for one micro-batch [b, T] of one replica.

        The gradients are those of the copies in mixed precision (in the compute dtype).
        """
        # The gradient is taken inside the scope: memory saving recomputes the blocks there.
        with self._reading_copies(), tf.GradientTape() as tape:
            total = loss_sum(self.model, inputs, labels, training=True)
            scaled = total / self.predictions
            if self.loss_scaling:
                scaled = self.optimizer.scale_loss(scaled)
            grads = tape.gradient(scaled, self.copies or self.variables)
        # Embedding gradients come as IndexedSlices; dense ones can be summed and all-reduced.
        return total, [tf.convert_to_tensor(g) for g in grads]

    def _in_variable_dtype(self, grads):
        """The gradients in their weights' dtype: float32 in mixed precision."""
        return [tf.cast(g, v.dtype) for g, v in zip(grads, self.variables)]

    def _replica_step(self, inputs, labels):
        """(loss sum, whether the loss and every gradient are finite on every replica), after the
        update, which is applied only when they are."""
        total, grads = self._gradients(inputs[0], labels[0])
        if self.accumulate > 1:  # the gradients are summed in float32
            def add_micro_batch(i, total, grads):
                more, more_grads = self._gradients(inputs[i], labels[i])
                more_grads = self._in_variable_dtype(more_grads)
                return i + 1, total + more, [g + h for g, h in zip(grads, more_grads)]

            _, total, grads = tf.while_loop(lambda i, *_: i < self.accumulate, add_micro_batch,
                                            (tf.constant(1), total, self._in_variable_dtype(grads)))
        grads = self._in_variable_dtype(grads)
        replica = tf.distribute.get_replica_context()
        # Decided on every replica's loss and gradients together (scaled ones, with loss scaling),
        # so that all of them skip or none does.
        finite = tf.reduce_all([tf.math.is_finite(total)]
                               + [tf.reduce_all(tf.math.is_finite(g)) for g in grads])
        finite = replica.all_reduce(tf.distribute.ReduceOp.SUM, 1.0 - tf.cast(finite, tf.float32)) == 0
        if self.grad_clip:
            grads = self._clipped(grads, replica)
        if self.loss_scaling:
            # Keras' LossScaleOptimizer skips the update (and halves its scale) by the gradients it
            # is given, on each replica its own: a NaN put into one makes every replica see what any
            # replica saw.
            smallest = min(range(len(grads)), key=lambda i: grads[i].shape.num_elements())
            grads[smallest] += tf.where(finite, 0.0, float("nan"))
            self._apply(grads)
        else:
            self._apply_if(finite, grads)
        return total, finite

    def _clipped(self, grads, replica):
        """This replica's gradients scaled so that their sum over the replicas has a global norm of at
        most grad_clip (on one device, tf.clip_by_global_norm's values). The norm is that of the sum,
        so across replicas the gradients are all-reduced once more for it."""
        summed = grads if self.replicas == 1 else replica.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        norm = tf.linalg.global_norm(summed)
        if self.loss_scaling:
            norm = norm / tf.cast(self.optimizer.dynamic_scale, norm.dtype)
        scale = self.grad_clip * tf.minimum(1.0 / norm, 1.0 / self.grad_clip)
        return [g * scale for g in grads]

    def _apply_if(self, finite, grads):
        """Apply the gradients when `finite` (the same on every replica), else leave everything as it is.

        Where the strategy synchronises replicas by merge_call (MirroredStrategy outside XLA, on one
        device too), no condition may hold a synchronisation in a replica's context: the condition is
        then taken in the cross-replica context, and each replica applies its gradients inside it, as
        Keras' LossScaleOptimizer does.
        """
        if tf.__internal__.distribute.strategy_supports_no_merge_call():
            tf.cond(finite, lambda: self._apply(grads), lambda: None)
            return

        def cross_replica(strategy, finite, grads):
            tf.cond(strategy.experimental_local_results(finite)[0],
                    lambda: strategy.extended.call_for_each_replica(self._apply, args=(grads,)), lambda: None)

        tf.distribute.get_replica_context().merge_call(cross_replica, args=(finite, grads))

    def _apply_gradients(self, grads):
        self.optimizer.apply_gradients(zip(grads, self.variables))
        for variable, copy in zip(self.variables, self.copies):
            copy.assign(tf.cast(variable, copy.dtype))

    def _distributed_step(self, inputs, labels):
        totals, finite = self.strategy.run(self._replica_step, args=(inputs, labels))
        finite = self.strategy.experimental_local_results(finite)[0]  # the same on every replica
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, totals, axis=None), finite

    def distribute(self, array, axis):
        """Give each replica its slice of `array` along `axis` (the batch axis)."""
        n = self.per_replica

        def share(context):
            index = [slice(None)] * array.ndim
            start = context.replica_id_in_sync_group * n
            index[axis] = slice(start, start + n)
            return tf.constant(array[tuple(index)])

        return self.strategy.experimental_distribute_values_from_function(share)

    def __call__(self, inputs, labels):
        if self.copies is None:
            self.copies = self._make_copies()
        total, finite = self._step(self.distribute(inputs, 1), self.distribute(labels, 1))
        return float(total) / self.predictions, bool(finite)


class Evaluator:
    """Sampled validation: `evaluator(tokens [V, T])` -> (mean cross-entropy, accuracy) over the
    V * (T - 1) predictions (score.next_token_scores' definitions).

    Runs on every replica of the strategy; when V does not divide among them, the batch is padded
    with rows that count for nothing.
    """

    def __init__(self, model, strategy, jit_compile=False):
        self.model = model
        self.strategy = strategy
        self.replicas = strategy.num_replicas_in_sync
        self._sums = tf.function(self._replica_sums, jit_compile=jit_compile)
        self._step = tf.function(self._distributed_sums)

    def _replica_sums(self, tokens, weights):
        scores = window_scores(self.model, tokens, tokens)
        counted = weights[:, None]
        return (tf.reduce_sum(scores["loss"] * counted),
                tf.reduce_sum(tf.cast(scores["correct"], tf.float32) * counted))

    def _distributed_sums(self, tokens, weights):
        nll, correct = self.strategy.run(self._sums, args=(tokens, weights))
        return tuple(self.strategy.reduce(tf.distribute.ReduceOp.SUM, x, axis=None) for x in (nll, correct))

    def __call__(self, tokens):
        tokens = np.asarray(tokens, np.int32)
        rows, length = tokens.shape
        per_replica = -(-rows // self.replicas)
        padded = np.zeros([per_replica * self.replicas, length], np.int32)
        padded[:rows] = tokens
        weights = np.zeros([len(padded)], np.float32)
        weights[:rows] = 1

        def share(array):
            def value(context):
                start = context.replica_id_in_sync_group * per_replica
                return tf.constant(array[start:start + per_replica])
            return self.strategy.experimental_distribute_values_from_function(value)

        nll, correct = self._step(share(padded), share(weights))
        predictions = rows * (length - 1)
        return float(nll) / predictions, float(correct) / predictions
