"""lab.bn: notebook 01's measurements of distributed BN: exactness against one device, the noise of a group's
mean and variance against their predictions, and the collectives a BN layer's program holds.

Must not: render (``labkit.figures`` does) or re-implement BN (``labkit.bn`` owns it; this only measures it).
"""
from __future__ import annotations

__all__ = ["bn_exactness", "bn_group_sweep", "bn_collectives"]


def bn_exactness(topo, *, per_replica: int = 4, channels: int = 5, seed: int = 0) -> dict:
    """Grouped BN on the mesh vs flax's own BatchNorm on each group's concatenated batch, on one device.

    Returns the largest absolute differences of the outputs and of the running means (float32 noise, ~1e-6).
    """
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import PartitionSpec as P

    from labkit.bn import DistributedBatchNorm
    x = np.random.default_rng(seed).normal(2.0, 3.0, (topo.num_replicas * per_replica, 3, 3, channels))
    x = x.astype(np.float32)
    axes = topo.replica_axes
    bn = DistributedBatchNorm(use_running_average=False, axis_name=topo.bn_axes)
    variables = bn.init(jax.random.key(0), x[:1])

    def body(xr):
        y, new = bn.apply(variables, xr, mutable=["batch_stats"])
        return y, new["batch_stats"]["mean"][None]

    y, means = jax.jit(jax.shard_map(body, mesh=topo.mesh, in_specs=P(axes), out_specs=(P(axes), P(axes))))(
        topo.shard_batch(x))
    ref = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
    out_diff = mean_diff = 0.0
    for group in topo.bn_groups():
        rows = np.concatenate([np.arange(r * per_replica, (r + 1) * per_replica) for r in group])
        y_ref, new = ref.apply(variables, jnp.asarray(x[rows]), mutable=["batch_stats"])
        out_diff = max(out_diff, float(np.abs(np.asarray(y)[rows] - np.asarray(y_ref)).max()))
        mean_diff = max(mean_diff, float(np.abs(np.asarray(means)[group] - np.asarray(new["batch_stats"]["mean"])).max()))
    return {"groups": topo.bn_groups(), "max_output_diff": out_diff, "max_running_mean_diff": mean_diff}


def bn_group_sweep(groups=(1, 2, 4, 8), per_replica=(2, 4, 8, 16), *, trials: int = 24, channels: int = 8,
                   shape=None, seed: int = 0) -> list[dict]:
    """Measure BN-statistics noise, mean and variance, for each BN group size and per-replica batch; one row per
    pair.

    The input of a BN layer: real digits through a fixed random 3x3 conv (``channels`` outputs). For each of
    ``trials`` fresh global batches (``replicas x n`` images drawn without replacement), grouped BN runs on the
    mesh and reports, per replica and channel, the mean and variance it normalized with. Mean noise: the RMS over
    trials, replicas and channels of (that mean - the global batch's mean) / the global batch's std; variance
    noise: of (that variance - the global batch's variance) / the global batch's variance; both in float64 on
    the host. Predictions for images drawn at random (an image is the unit of sampling: its pixels are not
    independent): ``c * sqrt(1/(g n) - 1/(R n))`` = ``c * sqrt(1 - g/R) / sqrt(BN batch)`` for the mean and the
    same with ``c_var`` for the variance (``_noise_constants``: from the whole data set). Row keys:
    ``bn_group``, ``per_replica``, ``bn_batch``, ``global_batch``, ``replicas``, ``noise``, ``predicted``,
    ``var_noise``, ``var_predicted``, ``c``, ``c_var``.
    """
    import numpy as np
    from labkit.data import digits_batch
    from labkit.mesh import Topology
    images, _ = digits_batch(1797, 8)  # every image of the data set
    feats = _random_conv(images, channels, seed)
    c, c_var = _noise_constants(feats)
    rng = np.random.default_rng(seed)
    rows = []
    for g in groups:
        topo = Topology.build(shape=shape, bn_group=g)
        stats = _group_stats_fn(topo)
        r = topo.num_replicas
        for n in per_replica:
            sq, sq_var = [], []
            for _ in range(trials):
                x = feats[rng.choice(len(feats), r * n, replace=False)]
                got = np.asarray(stats(topo.shard_batch(x)), np.float64)  # [replicas, 2 (mean, var), channels]
                x64 = x.astype(np.float64)
                mu, var = x64.mean((0, 1, 2)), x64.var((0, 1, 2))
                sq.append(float(np.mean((got[:, 0] - mu) ** 2 / var)))
                sq_var.append(float(np.mean((got[:, 1] / var - 1) ** 2)))
            spread = np.sqrt(max(0.0, 1 / (g * n) - 1 / (r * n)))
            rows.append({"bn_group": g, "per_replica": n, "bn_batch": g * n, "global_batch": r * n,
                         "replicas": r, "noise": float(np.sqrt(np.mean(sq))), "predicted": float(c * spread),
                         "var_noise": float(np.sqrt(np.mean(sq_var))), "var_predicted": float(c_var * spread),
                         "c": c, "c_var": c_var})
    return rows


def _noise_constants(feats) -> tuple[float, float]:
    """(c, c_var) of BN noise for ``feats`` [images, H, W, C], images as the units of sampling, float64.

    ``c^2``: the variance between images of a channel's per-image mean over the pixel variance. ``c_var^2``: the
    variance between images of q_i = the image's mean of (x - mu)^2, over sigma^4 (mu, sigma^2: the data set's
    mean and variance of the channel); averaged over channels. The mean of m such units has relative variance
    ``c_var^2 / m``: the textbook variance of a sample variance, (mu_4 - sigma^4) / m (= 2 sigma^4 / m for normal
    data), with images in place of independent values. The group-mean term of the sample variance is second order.
    """
    import numpy as np
    x = np.asarray(feats, np.float64).reshape(len(feats), -1, feats.shape[-1])  # [images, pixels, C]
    mu, var = x.mean((0, 1)), x.var((0, 1))
    c2 = np.mean(x.mean(1).var(0) / var)
    q = np.square(x - mu).mean(1)                                               # [images, C]
    return float(np.sqrt(c2)), float(np.sqrt(np.mean(q.var(0) / var ** 2)))


def _random_conv(images, channels: int, seed: int):
    """A fixed random 3x3 'same' conv (3 -> ``channels``): the input of a first BN layer, in numpy."""
    import numpy as np
    w = np.random.default_rng(seed + 1).normal(0, 1 / 3, (3, 3, images.shape[-1], channels)).astype(np.float32)
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)))
    h, wd = images.shape[1:3]
    out = np.zeros(images.shape[:3] + (channels,), np.float32)
    for i in range(3):
        for j in range(3):
            out += padded[:, i:i + h, j:j + wd] @ w[i, j]
    return out


def _group_stats_fn(topo):
    """jit(shard_map): each replica's batch in, the per-channel (mean, variance) its BN group normalized with out."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import PartitionSpec as P
    from labkit.bn import DistributedBatchNorm
    bn = DistributedBatchNorm(use_running_average=False, momentum=0.0, axis_name=topo.bn_axes)

    def body(xr):  # momentum 0: the new running statistics ARE the group's (mean, biased variance) used
        c = xr.shape[-1]
        _, new = bn.apply({"batch_stats": {"mean": jnp.zeros(c), "var": jnp.ones(c)},
                           "params": {"scale": jnp.ones(c), "bias": jnp.zeros(c)}}, xr, mutable=["batch_stats"])
        return jnp.stack([new["batch_stats"]["mean"], new["batch_stats"]["var"]])[None]

    axes = topo.replica_axes
    return jax.jit(jax.shard_map(body, mesh=topo.mesh, in_specs=P(axes), out_specs=P(axes)))


def bn_collectives(topo, *, channels: int = 16, per_replica: int = 4) -> dict:
    """The collectives of ONE grouped BN layer on ``topo``, read from traced programs (jaxprs, nothing runs).

    ``forward``: the layer applied; ``backward``: what the gradient with respect to its input adds (the
    gradient of the parameters is left out: that is the separate gradient all-reduce). Lists of
    ``labkit.traced.collectives`` entries.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import PartitionSpec as P
    from labkit import traced
    from labkit.bn import DistributedBatchNorm
    bn = DistributedBatchNorm(use_running_average=False, axis_name=topo.bn_axes)
    x = np.zeros((topo.num_replicas * per_replica, 4, 4, channels), np.float32)
    variables = bn.init(jax.random.key(0), x[:1])

    def forward(xr):
        return bn.apply(variables, xr, mutable=["batch_stats"])[0]

    def grad(xr):
        return jax.grad(lambda v: jnp.sum(jnp.square(forward(v))))(xr)

    axes = topo.replica_axes
    on_mesh = lambda f: jax.shard_map(f, mesh=topo.mesh, in_specs=P(axes), out_specs=P(axes))  # noqa: E731
    fwd = traced.collectives(on_mesh(forward), x)
    both = traced.collectives(on_mesh(grad), x)
    if [c["primitive"] for c in both[:len(fwd)]] != [c["primitive"] for c in fwd]:
        raise RuntimeError("bn_collectives: the traced gradient does not start with the forward pass")
    return {"forward": fwd, "backward": both[len(fwd):], "bn_axes": topo.bn_axes, "bn_group": topo.bn_group,
            "channels": channels}
