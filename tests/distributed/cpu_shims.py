"""CPU (gloo) stand-ins for the fleet collectives that have no CPU kernel. TEST CODE ONLY.

Paddle's CPU build runs fleet's tensor-parallel layers only partly: `c_identity`, `c_concat`, `c_split` and
`c_softmax_with_cross_entropy` have no CPU kernels, gloo refuses `all_reduce` on the calculation stream
(`mp_allreduce`), and gloo has no `reduce_scatter` (sequence parallelism; its `all_gather` works).
`install_tensor_parallel()` / `install_sequence_parallel()` swap the functions fleet's layers look up at call
time (`mp_ops._c_identity`, ...) for PyLayers built on `dist.all_reduce` / `dist.all_gather`, with the same
forward and backward semantics. The shipped code path never imports this module.
"""

import paddle
import paddle.distributed as dist
from paddle.autograd import PyLayer
from paddle.distributed.fleet.layers.mpu import mp_ops
from paddle.distributed.fleet.utils import sequence_parallel_utils as sp_utils


def _all_reduce(x, group, op=dist.ReduceOp.SUM):
    out = x.clone()
    dist.all_reduce(out, op=op, group=group)
    return out


def _gather(x, group, axis):
    parts = []
    dist.all_gather(parts, x.contiguous(), group=group)
    return paddle.concat(parts, axis=axis)


def _own_slice(x, group, axis):
    return paddle.split(x, group.nranks, axis=axis)[group.rank].clone()


class _Identity(PyLayer):
    """Forward: copy. Backward: all-reduce (sum) over `group` (fleet's `c_identity`)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.clone()

    @staticmethod
    def backward(ctx, dy):
        return _all_reduce(dy, ctx.group)


class _AllReduce(PyLayer):
    """Forward: all-reduce (sum). Backward: identity (fleet's `mp_allreduce`)."""

    @staticmethod
    def forward(ctx, x, group):
        return _all_reduce(x, group)

    @staticmethod
    def backward(ctx, dy):
        return dy


class _Concat(PyLayer):
    """Forward: all-gather along the last axis. Backward: keep this rank's slice (fleet's `c_concat`)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _gather(x, group, -1)

    @staticmethod
    def backward(ctx, dy):
        return _own_slice(dy, ctx.group, -1)


class _Split(PyLayer):
    """Forward: keep this rank's slice of the last axis. Backward: all-gather (fleet's `c_split`)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _own_slice(x, group, -1)

    @staticmethod
    def backward(ctx, dy):
        return _gather(dy, ctx.group, -1)


class _ParallelSoftmaxCrossEntropy(PyLayer):
    """Cross entropy of vocabulary-split logits `[..., vocab / n]` against global labels `[..., 1]`
    (fleet's `c_softmax_with_cross_entropy`): loss `[..., 1]`, 0 where the label is `ignore_index`."""

    @staticmethod
    def forward(ctx, logits, label, group, ignore_index):
        part = logits.shape[-1]
        start = group.rank * part
        shifted = logits - _all_reduce(logits.max(axis=-1, keepdim=True), group, dist.ReduceOp.MAX)
        exp = shifted.exp()
        total = _all_reduce(exp.sum(axis=-1, keepdim=True), group)
        local = label.astype("int64") - start
        owned = paddle.logical_and(local >= 0, local < part)
        safe = paddle.where(owned, local, paddle.zeros_like(local))
        picked = paddle.take_along_axis(shifted, safe, axis=-1) * owned.astype(logits.dtype)
        keep = (label != ignore_index).astype(logits.dtype)
        loss = (total.log() - _all_reduce(picked, group)) * keep
        ctx.save_for_backward(exp / total, safe, owned, keep)
        return loss

    @staticmethod
    def backward(ctx, dloss):
        softmax, safe, owned, keep = ctx.saved_tensor()
        one_hot = paddle.nn.functional.one_hot(safe.squeeze(-1), softmax.shape[-1]) * owned.astype(softmax.dtype)
        return (softmax - one_hot) * dloss * keep


def c_identity(tensor, group=None, skip_c_identity_dynamic=False):
    return _Identity.apply(tensor, group)


def mp_allreduce(
    tensor, op=None, group=None, use_calc_stream=True, use_model_parallel=True, skip_c_identity_dynamic=False
):
    return _AllReduce.apply(tensor, group)


def c_concat(tensor, group=None):
    return _Concat.apply(tensor, group)


def c_split(tensor, group=None):
    return _Split.apply(tensor, group)


def c_softmax_with_cross_entropy(logits, label, group=None, return_softmax=False, ignore_index=-100):
    if label.ndim == logits.ndim - 1:
        label = label.unsqueeze(-1)
    return _ParallelSoftmaxCrossEntropy.apply(logits, label, group, ignore_index)


def reduce_scatter(x):
    """Sum over the model-parallel group, keep this rank's block of axis 0 (gloo has no reduce_scatter)."""
    group = dist.fleet.get_hybrid_communicate_group().get_model_parallel_group()
    return _own_slice(_all_reduce(x, group), group, 0)


def install_tensor_parallel() -> None:
    """Swap fleet's model-parallel collectives for the CPU versions above."""
    mp_ops._c_identity = c_identity
    mp_ops._mp_allreduce = mp_allreduce
    mp_ops._c_concat = c_concat
    mp_ops._c_split = c_split
    mp_ops._c_softmax_with_cross_entropy = c_softmax_with_cross_entropy


def install_sequence_parallel() -> None:
    """Swap sequence parallelism's reduce_scatter (no gloo kernel) for the CPU version above; its all_gather
    runs on gloo as shipped."""
    sp_utils.reduce_scatter = reduce_scatter
