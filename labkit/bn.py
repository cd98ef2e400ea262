"""bn: distributed (grouped) batch normalization, as in Ying et al. 2018, with per-replica statistics capture.

Owns ``DistributedBatchNorm`` (flax.linen ``BatchNorm``'s interface) and the reshaping of captured statistics
into telemetry records. Each replica computes float32 statistics of its own batch, the BN group pools them over
the mesh axes it spans, and the group's mean and variance normalize the batch. ``variance`` picks how:
``"chan"`` (default) = ONE collective a layer forward: every replica's (mean, M2 = sum of squared deviations
from its own mean) is all-gathered and combined with Chan et al.'s parallel formula: exact at any mean/std, and
its gradient needs ONE collective a layer backward; ``"two_pass"`` = the mean's collective, then a second one for
the sum of (x - mean)^2: exact, 2 forward + 3 backward; ``"fast"`` (flax's ``use_fast_variance``) = one
collective of (sum, sum of squares), var = E[x^2] - E[x]^2, which loses the variance when a channel's mean is
large against its spread.
Must not: choose the group layout (that is ``labkit.mesh``) or emit telemetry itself (the train step does).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["DistributedBatchNorm", "BN_STAT_FIELDS", "VARIANCE_FORMS", "stats_records"]

# How a BN group pools its statistics (``DistributedBatchNorm.variance``); the first is the default.
VARIANCE_FORMS = ("chan", "two_pass", "fast")

# What capture_stats records per BN layer and replica (channel-averaged, so a layer is one row of numbers).
BN_STAT_FIELDS = (
    "replica_mean",        # mean over channels of this replica's own batch mean
    "replica_var",         # ... of its own batch variance
    "group_mean",          # ... of the BN group's mean (what normalization actually used)
    "group_var",
    "running_mean",        # ... of the running mean before this step's update
    "running_var",
    "replica_vs_group",    # RMS over channels of (replica mean - group mean) / group std
    "group_vs_running",    # RMS over channels of (group mean - running mean) / running std: BN noise
    "replica_vs_running",  # RMS over channels of (replica mean - running mean) / running std
)

Axes = str | Sequence[str] | None


def _axes_tuple(axis_name: Axes) -> tuple[str, ...]:
    if axis_name is None:
        return ()
    return (axis_name,) if isinstance(axis_name, str) else tuple(axis_name)


class DistributedBatchNorm(nn.Module):
    """Batch norm whose statistics are summed over a BN group of replicas.

    Attributes mirror ``flax.linen.BatchNorm``. ``axis_name`` names the mesh axis (or axes) one BN group spans
    inside ``jax.shard_map`` (``Topology.bn_axes``); ``None`` or ``()`` means per-replica BN. ``axis_index_groups``
    exists only for the ``pmap`` teaching comparison (the paper's literal ``cross_replica_sum`` form).
    With ``capture_stats=True`` and the ``'bn_stats'`` collection mutable, a vector of ``BN_STAT_FIELDS`` is
    stored per layer. Like flax's BatchNorm it can be initialized outside ``shard_map`` (no collective at init).

    ``variance``: ``"chan"`` (default): each replica's float32 (mean, M2) of its own batch (M2 = sum of squared
    deviations from that mean: no cancellation) travel in one all-gather over the group; every replica combines
    them with Chan et al.'s formula (equal counts: mean = mean of the means, M2 = sum of M2 + n * sum of squared
    mean differences). One collective forward; backward, the group's (mean, var) are cast to per-replica once,
    so the transposed program sums their two cotangent vectors in one collective. ``"two_pass"``: the mean's
    collective, then the squared deviations' (2 forward, 3 backward). ``"fast"``: E[x^2] - E[x]^2 from one
    collective (float32 loses it: 58% error at mean/std 300, and a variance clamped to 0 multiplies the output
    by ~316). Default "chan": as accurate as two_pass, with the fewest collectives (BENCHMARKS.md, "Distributed
    BN: one collective a layer each way"). ``use_fast_variance=True`` (flax's flag) means ``"fast"``.
    """
    use_running_average: bool | None = None
    axis: int = -1
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Any = None  # output dtype; None keeps the input dtype
    param_dtype: Any = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Callable = nn.initializers.zeros
    scale_init: Callable = nn.initializers.ones
    axis_name: Axes = None
    axis_index_groups: Sequence[Sequence[int]] | None = None
    capture_stats: bool = False
    variance: str = "chan"
    use_fast_variance: bool = False

    @nn.compact
    def __call__(self, x, use_running_average: bool | None = None):
        use_ra = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
        feature_axis = self.axis % x.ndim
        reduce_axes = tuple(i for i in range(x.ndim) if i != feature_axis)
        features = x.shape[feature_axis]
        bshape = [1] * x.ndim
        bshape[feature_axis] = features
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))

        x32 = x.astype(jnp.float32)
        if use_ra:
            mean, var = ra_mean.value, ra_var.value
            norm_mean, norm_var = mean, var
        else:
            # Statistics in float32 (the paper: bf16 sums lose too much at small batches).
            local_count = math.prod(x.shape[i] for i in reduce_axes)
            axes = _axes_tuple(self.axis_name) if not self.is_initializing() else ()
            count = local_count * ((len(self.axis_index_groups[0]) if self.axis_index_groups
                                    else math.prod(jax.lax.axis_size(a) for a in axes)) if axes else 1)
            local_sum = x32.sum(reduce_axes)
            form = self._form()
            if form == "chan":
                mean, var = self._chan(x32, local_sum / local_count, reduce_axes, bshape, axes, local_count)
            elif form == "fast":
                # One collective per layer: sum and sum of squares travel together.
                local = jnp.stack([local_sum, jnp.square(x32).sum(reduce_axes)])
                group = self._group_sum(local, axes)
                mean = group[0] / count
                var = jnp.maximum(group[1] / count - jnp.square(mean), 0.0)
            else:
                # Two collectives: the group's mean, then squared deviations from it (no cancellation).
                mean = self._group_sum(local_sum, axes) / count
                var = self._group_sum(jnp.square(x32 - mean.reshape(bshape)).sum(reduce_axes), axes) / count
            norm_mean, norm_var = self._for_normalizing(mean, var, axes) if form == "chan" else (mean, var)
            if self.capture_stats and not self.is_initializing():
                replica_mean = local_sum / local_count
                replica_var = jnp.square(x32 - replica_mean.reshape(bshape)).mean(reduce_axes)
                self._capture(replica_mean, replica_var, mean, var, ra_mean.value, ra_var.value)
            if not self.is_initializing():
                ra_mean.value = self.momentum * ra_mean.value + (1.0 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1.0 - self.momentum) * var

        # Scale folded into the per-channel factor: one multiply over the activations instead of two, forward and
        # backward (measured ~5% of a resnet_tiny step: BENCHMARKS.md, bench peers).
        mul = jax.lax.rsqrt(norm_var + self.epsilon)
        if self.use_scale:
            mul = mul * self.param("scale", self.scale_init, (features,), self.param_dtype).astype(jnp.float32)
        y = (x32 - norm_mean.reshape(bshape)) * mul.reshape(bshape)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (features,), self.param_dtype).astype(jnp.float32).reshape(bshape)
        return y.astype(self.dtype or x.dtype)

    def _form(self) -> str:
        form = "fast" if self.use_fast_variance else self.variance
        if form not in VARIANCE_FORMS:
            raise ValueError(f"DistributedBatchNorm.variance: unknown form {form!r}; allowed values: "
                             f"{list(VARIANCE_FORMS)}")
        return form

    def _chan(self, x32, local_mean, reduce_axes, bshape, axes: tuple[str, ...], local_count: int):
        """The group's (mean, biased variance) from one all-gather of every replica's (mean, M2): Chan et al.'s
        pairwise combination, for equal counts (every replica's block has the same shape inside shard_map)."""
        local_m2 = jnp.square(x32 - local_mean.reshape(bshape)).sum(reduce_axes)
        if not axes:
            return local_mean, local_m2 / local_count
        with jax.named_scope("bn_group_sum"):  # the name labkit.profile ties BN collectives to
            if self.axis_index_groups:  # the pmap teaching comparison: groups of the pmapped axis
                gathered = jax.lax.all_gather(jnp.stack([local_mean, local_m2]), axes,
                                              axis_index_groups=self.axis_index_groups)
            else:  # typed replicated over the group: every member holds the same (mean, M2) rows
                gathered = jax.lax.all_gather(jnp.stack([local_mean, local_m2])[None], axes, axis=0, tiled=True,
                                              to="invarying")
        means, m2s = gathered[:, 0], gathered[:, 1]  # [g, C] each
        mean = means.mean(0)
        var = (m2s.sum(0) + local_count * jnp.square(means - mean).sum(0)) / (local_count * means.shape[0])
        return mean, var

    def _for_normalizing(self, mean, var, axes: tuple[str, ...]):
        """``mean`` and ``var`` as the per-replica values the normalization uses, cast together in ONE cast.

        They are replicated over the group (all-gathered); using them in per-replica arithmetic casts them to
        per-replica, and the gradient of each such cast is a group sum of its cotangent. Cast separately (or
        implicitly, once per use) that is up to three collectives backward; cast stacked, it is one: the sum of
        the two cotangent vectors the BN backward pass needs. (Under ``check_vma=False`` the cast is nothing and
        the all-gather's transpose, one reduce-scatter, sums them instead.)
        """
        if not axes or self.axis_index_groups:
            return mean, var
        with jax.named_scope("bn_group_sum"):
            stats = jax.lax.pcast(jnp.stack([mean, var]), axes, to="varying")
        return stats[0], stats[1]

    def _group_sum(self, v, axes: tuple[str, ...]):
        """Sum ``v`` over the BN group (nothing to do for per-replica BN or at init). The scope names it in the
        compiled program (and its transpose in the backward pass), for labkit.profile's breakdown."""
        if not axes:
            return v
        with jax.named_scope("bn_group_sum"):
            return jax.lax.psum(v, axes, axis_index_groups=self.axis_index_groups)

    def _capture(self, replica_mean, replica_var, group_mean, group_var, run_mean, run_var):
        group_std = jnp.sqrt(group_var + self.epsilon)
        run_std = jnp.sqrt(run_var + self.epsilon)
        rms = lambda d: jnp.sqrt(jnp.mean(jnp.square(d)))  # noqa: E731
        vec = jnp.stack([
            replica_mean.mean(), replica_var.mean(), group_mean.mean(), group_var.mean(),
            run_mean.mean(), run_var.mean(),
            rms((replica_mean - group_mean) / group_std),
            rms((group_mean - run_mean) / run_std),
            rms((replica_mean - run_mean) / run_std),
        ])
        self.sow("bn_stats", "summary", vec, init_fn=lambda: jnp.zeros(len(BN_STAT_FIELDS)),
                 reduce_fn=lambda _old, new: new)


def stats_records(bn_stats, bn_groups: Sequence[Sequence[int]] | None = None) -> list[dict]:
    """Captured ``'bn_stats'`` (leaves ``[replicas, len(BN_STAT_FIELDS)]``, host or device) -> one record a layer.

    Each record: ``{"layer": "path/to/bn", "<field>": [value per replica], ..., "groups": bn_groups}``, ready for
    ``telemetry.emit("bn_stats", **record)``. Reformats only; computes nothing new. With several processes it
    first gathers every replica's row (a collective: every process must call it).
    """
    if jax.process_count() > 1:  # other hosts hold the other replicas' rows (every process must call this)
        from jax.experimental import multihost_utils
        bn_stats = multihost_utils.process_allgather(bn_stats, tiled=True)
    flat = _layer_paths(jax.device_get(bn_stats))  # one transfer for every layer
    records = []
    for path, leaf in flat:
        arr = np.asarray(leaf, dtype=np.float64).reshape(-1, len(BN_STAT_FIELDS))
        rec = {"layer": path}
        for i, name in enumerate(BN_STAT_FIELDS):
            rec[name] = arr[:, i].tolist()
        if bn_groups is not None:
            rec["groups"] = [list(map(int, g)) for g in bn_groups]
        records.append(rec)
    return records


def _layer_paths(tree) -> list[tuple[str, Any]]:
    """(path, leaf) pairs of a captured 'bn_stats' tree, path without the trailing 'summary' key."""
    from flax.traverse_util import flatten_dict
    flat = flatten_dict(tree.unfreeze() if hasattr(tree, "unfreeze") else dict(tree))
    return [("/".join(k[:-1] if k[-1] == "summary" else k), v) for k, v in sorted(flat.items())]
