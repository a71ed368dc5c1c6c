"""Delay-compensated asynchronous SGD (DC-ASGD; Zheng et al., "Asynchronous Stochastic Gradient
Descent with Delay Compensation", ICML 2017), as a ``tf.compat.v1`` optimizer.

On a parameter-server cluster a worker computes its gradient ``g`` at the weights it read,
``w_bak``; by the time the gradient reaches the PS, other workers have moved the weights to
``w``. DC-ASGD corrects the stale gradient with a first-order Taylor term whose Hessian is
approximated by ``lambda * g * g`` (elementwise)::

    w <- w - lr * (g + lambda * g * g * (w - w_bak))

Two variants, both from the paper:

- ``constant`` (DC-ASGD-c): a fixed ``lambda``;
- ``adaptive`` (DC-ASGD-a, the default): ``lambda = lambda0 / sqrt(m + eps)`` per element, with
  ``m <- decay * m + (1 - decay) * g * g`` kept as the optimizer slot ``mean_square``. ``m``
  takes this step's ``g`` before it is used, so ``g * g / sqrt(m)`` stays below
  ``|g| / sqrt(1 - decay)`` and one large gradient cannot blow up the correction.

The paper keeps a backup of the weights per worker on the PS. Here the backup is what the
step's forward pass read, handed over as :class:`~weiflow.engines.tensorflow.models.Read`
tensors, so nothing extra is stored: for a dense variable the read is produced on its PS and
stays there until the update consumes it; for an embedding table it is the rows the forward
pass gathered, so only those rows are compensated and the table is never read whole. The
update runs where the variable lives (the v1 optimizers' placement) and subtracts its step
with one ``assign_sub``/``scatter_sub``, so concurrent updates from other workers add up
rather than overwrite each other. With one worker, or in a single process, ``w == w_bak``
and the update is exactly plain SGD.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import tensorflow as tf

from weiflow.engines.tensorflow.models import Read

__all__ = ["DelayCompensatedSGD", "require_reads"]

_SLOT = "mean_square"


def require_reads(model: tf.Module, name: str) -> None:
    """Fail, naming the fix, when ``model`` cannot report what its forward pass read."""
    if not callable(getattr(model, "call_with_reads", None)):
        raise TypeError(
            f"optimizer 'dc-asgd' needs model '{name}' ({type(model).__name__}) to report the values its forward "
            "pass read: give it a method call_with_reads(features) -> (logits, [Read(variable, value, indices)]) "
            "(weiflow.engines.tensorflow.models.Read; see docs/tensorflow.md, DC-ASGD), "
            "or train it with optimizer sgd, adagrad or adam"
        )


class DelayCompensatedSGD(tf.compat.v1.train.Optimizer):  # type: ignore[misc]  # TensorFlow ships no types
    """SGD whose gradients are compensated for the updates that landed since the worker read the weights.

    Apply gradients with :meth:`apply_compensated`, passing the step's reads.
    """

    def __init__(
        self,
        learning_rate: float,
        dc_lambda: float,
        *,
        adaptive: bool = True,
        decay: float = 0.95,
        epsilon: float = 1e-7,
        name: str = "DCASGD",
    ) -> None:
        super().__init__(use_locking=False, name=name)
        self.learning_rate = learning_rate
        self.dc_lambda = dc_lambda
        self.adaptive = adaptive
        self.decay = decay
        self.epsilon = epsilon
        self._reads: dict[Any, Read] = {}

    def apply_compensated(self, grads_and_vars: Iterable[tuple[Any, tf.Variable]], reads: Sequence[Read]) -> Any:
        """``apply_gradients``, each variable compensated against its read in ``reads``."""
        by_variable: dict[Any, Read] = {}
        for read in reads:
            if read.variable.ref() in by_variable:
                raise ValueError(f"two reads of variable '{read.variable.name}': report one per variable")
            by_variable[read.variable.ref()] = read
        pairs = list(grads_and_vars)
        missing = [v.name for g, v in pairs if g is not None and v.ref() not in by_variable]
        if missing:
            raise ValueError(
                f"optimizer 'dc-asgd': the model reported no read of {', '.join(missing)}; call_with_reads must "
                "return a Read of every variable the forward pass uses"
            )
        # The v1 update path calls _resource_apply_* per variable with no room for extra
        # arguments; tracing is synchronous, so the reads are only held for this call.
        self._reads = by_variable
        try:
            return self.apply_gradients(pairs)
        finally:
            self._reads = {}

    def _read(self, var: tf.Variable) -> Read:
        read = self._reads.get(var.ref())
        if read is None:
            raise ValueError(f"DelayCompensatedSGD: no read of '{var.name}': apply with apply_compensated")
        return read

    def _create_slots(self, var_list: list[tf.Variable]) -> None:
        if self.adaptive:
            for var in var_list:
                self._zeros_slot(var, _SLOT, self._name)

    def _compensated(self, grad: tf.Tensor, current: tf.Tensor, backup: tf.Tensor, mean_square: Any) -> tf.Tensor:
        square = grad * grad
        if mean_square is None:
            scale = tf.constant(self.dc_lambda, grad.dtype)
        else:
            scale = self.dc_lambda * tf.math.rsqrt(mean_square + self.epsilon)
        return grad + scale * square * (current - backup)

    def _resource_apply_dense(self, grad: tf.Tensor, var: tf.Variable) -> Any:
        read = self._read(var)
        if read.indices is not None:
            raise ValueError(
                f"optimizer 'dc-asgd': '{var.name}' has a dense gradient but the model reported only rows of it; "
                "report its whole value (Read without indices)"
            )
        backup = tf.reshape(read.value, tf.shape(var))
        # Read the weights as they are when the gradient has arrived, not when the step began:
        # without this dependency the read could run before the forward pass and see w_bak.
        with tf.control_dependencies([grad]):
            current = var.read_value()
        updates = []
        mean_square = None
        if self.adaptive:
            slot = self.get_slot(var, _SLOT)
            mean_square = self.decay * slot.read_value() + (1.0 - self.decay) * grad * grad
            updates.append(slot.assign(mean_square, read_value=False))
        step = self.learning_rate * self._compensated(grad, current, backup, mean_square)
        updates.append(var.assign_sub(step, read_value=False))
        return tf.group(*updates)

    def _resource_apply_sparse_duplicate_indices(self, grad: tf.Tensor, var: tf.Variable, indices: tf.Tensor) -> Any:
        read = self._read(var)
        count_grad = tf.size(indices)
        if read.indices is None:
            ids, position = tf.unique(indices)
        else:
            # The forward pass may have gathered in another order than the gradient lists its
            # rows: one unique over both lines each gradient row up with its backup row.
            read_ids = tf.cast(tf.reshape(read.indices, [-1]), indices.dtype)
            ids, position = tf.unique(tf.concat([indices, read_ids], 0))
        count = tf.size(ids)
        grad = tf.math.unsorted_segment_sum(grad, position[:count_grad], count)
        if read.indices is None:
            backup = tf.gather(read.value, ids)
        else:
            width = tf.shape(var)[1:]
            rows = tf.reshape(read.value, tf.concat([[-1], width], 0))
            covered = tf.size(tf.unique(read_ids)[0])
            check = tf.debugging.assert_equal(
                covered,
                count,
                message=f"optimizer 'dc-asgd': the gradient of '{var.name}' touches rows its Read does not hold",
            )
            with tf.control_dependencies([check]):
                # Repeated ids are copies of one gathered row, so any of them is the backup.
                backup = tf.math.unsorted_segment_max(rows, position[count_grad:], count)
        with tf.control_dependencies([grad]):
            current = var.sparse_read(ids)
        updates = []
        mean_square = None
        if self.adaptive:
            # Only the rows this step touches: the moving average of a row advances when it
            # has a gradient, as in TensorFlow's sparse RMSProp.
            slot = self.get_slot(var, _SLOT)
            mean_square = self.decay * slot.sparse_read(ids) + (1.0 - self.decay) * grad * grad
            updates.append(tf.raw_ops.ResourceScatterUpdate(resource=slot.handle, indices=ids, updates=mean_square))
        step = self.learning_rate * self._compensated(grad, current, backup, mean_square)
        updates.append(tf.raw_ops.ResourceScatterSub(resource=var.handle, indices=ids, updates=step))
        return tf.group(*updates)
