"""labkit.models: the ResNet v1.5 family's parameter counts (published torchvision figures), shapes, init, dtypes."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from labkit.models import MODELS, count_params, create_model

# Trainable parameters with 1000 classes, as published for torchvision's ResNet v1.5 (same architecture).
PUBLISHED = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
             "resnet101": 44_549_160, "resnet152": 60_192_808}


def _shapes(model, size=224, batch=1):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((batch, size, size, 3)), train=False))


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_counts_match_published(name):
    assert count_params(_shapes(create_model(name))["params"]) == PUBLISHED[name]


def test_resnet200_is_deeper_than_152():
    assert count_params(_shapes(create_model("resnet200"))["params"]) > PUBLISHED["resnet152"]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_output_shapes(name):
    small = MODELS[name].keywords.get("small_inputs", False)
    size = 32 if small else 224
    model = create_model(name, num_classes=17)
    variables = _shapes(model, size)
    out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, size, size, 3)), train=False), variables)
    assert out.shape == (2, 17) and out.dtype == jnp.float32


# Both block kinds at teaching size: the basic block (resnet_tiny) and resnet50's bottleneck block in a two-stage,
# 8-filter net (the block code is the same; a full-size net's init only compiles longer).
_BLOCK_KINDS = {"resnet_tiny": {}, "resnet50": {"stage_sizes": (1, 1), "width": 0.125, "small_inputs": True}}


def test_last_bn_of_every_block_starts_at_zero():
    for name, overrides in _BLOCK_KINDS.items():
        model = create_model(name, num_classes=10, **overrides)
        init = jax.jit(model.init, static_argnames="train")  # one compile instead of one per op
        params = init(jax.random.key(0), jnp.ones((1, 32, 32, 3)), train=False)["params"]
        blocks = [k for k in params if k.startswith("stage")]
        assert blocks
        for block in blocks:
            norms = sorted(k for k in params[block] if k.startswith("DistributedBatchNorm"))
            assert np.all(np.asarray(params[block][norms[-1]]["scale"]) == 0), (name, block)
            assert all(np.all(np.asarray(params[block][n]["scale"]) == 1) for n in norms[:-1])
            assert np.all(np.asarray(params[block].get("norm_proj", {"scale": 1.0})["scale"]) == 1)


def test_bfloat16_compute_with_float32_parameters():
    model = create_model("resnet_tiny", num_classes=10, dtype="bfloat16")
    x = jnp.ones((2, 32, 32, 3))
    variables = model.init(jax.random.key(0), x, train=False)
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables["params"]))
    logits, state = model.apply(variables, x, train=False, capture_intermediates=True, mutable=["intermediates"])
    assert logits.dtype == jnp.float32
    inner = flax.traverse_util.flatten_dict(state["intermediates"])
    stage_out = [v for k, v in inner.items() if k[0].startswith("stage") and len(k) == 2]
    assert stage_out and all(v[0].dtype == jnp.bfloat16 for v in stage_out)


def test_width_multiplier_and_small_stem_use_the_same_code():
    narrow = create_model("resnet18", width=0.5)
    p = _shapes(narrow)["params"]
    assert p["conv_init"]["kernel"].shape == (7, 7, 3, 32)
    assert count_params(p) < PUBLISHED["resnet18"] / 3
    small = create_model("resnet18_small", num_classes=10)
    ps = _shapes(small, 32)["params"]
    assert ps["conv_init"]["kernel"].shape == (3, 3, 3, 16)
    assert set(k for k in ps if k.startswith("stage")) == set(k for k in p if k.startswith("stage"))


def test_unknown_model_and_dtype_are_clear_errors():
    with pytest.raises(ValueError, match=r"model: unknown name 'resnet51'; allowed values: \['resnet101'"):
        create_model("resnet51")
    with pytest.raises(ValueError, match=r"dtype: 'fp8' is not supported; allowed values"):
        create_model("resnet18", dtype="fp8")


def test_resnet50_has_the_bn_layer_count_the_cost_model_uses():
    """collectives.costmodel.RESNET50_BN_LAYERS (BN collectives per step) = the model's BN layers (shapes only)."""
    from labkit.collectives.costmodel import RESNET50_BN_LAYERS
    model = create_model("resnet50", num_classes=1000)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False))
    means = [p for p, _ in jax.tree_util.tree_leaves_with_path(shapes["batch_stats"]) if "mean" in str(p[-1])]
    assert len(means) == RESNET50_BN_LAYERS == 1 + 16 * 3 + 4
