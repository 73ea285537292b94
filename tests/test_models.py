"""The model zoo against the spec's measured counts, fusion maths and input validation."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import jit_forward, randomise_jax_batchnorm
from ghostnet_jax.models import RepConv, create_model, fuse, list_models
from ghostnet_jax.models.ghostnet import min_input_size
from ghostnet_jax.summary import count_macs, count_params

# Measured with timm 1.0.31 (== the official code), reference spec section 6: params, MACs at 224x224,
# and for V3 the fused (deploy) params and MACs.
SPEC_COUNTS = {
    "ghostnet_050": (2_587_292, 42_328_152, None, None),
    "ghostnet_100": (5_182_508, 141_150_512, None, None),
    "ghostnet_130": (7_358_820, 227_003_256, None, None),
    "ghostnetv2_100": (6_156_908, 167_048_288, None, None),
    "ghostnetv2_130": (8_960_404, 269_322_976, None, None),
    "ghostnetv2_160": (12_392_698, 398_607_224, None, None),
    "ghostnetv3_050": (3_395_384, 117_528_000, 2_853_176, 49_640_656),
    "ghostnetv3_100": (8_129_028, 404_128_320, 6_147_588, 167_048_288),
    "ghostnetv3_130": (12_217_720, 654_842_824, 8_948_296, 269_322_976),
    "ghostnetv3_160": (17_275_700, 971_574_612, 12_377_778, 398_607_224),
}


def images(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape).astype(np.float32))


# Checks of V3 whose point is neither the input size nor the DFC upsampling use the converted models' shape and
# rule (tests/test_convert.py: the non-square size, PyTorch's nearest upsampling), so that equal networks (a
# variant, its deploy form whatever the branches) reuse one compiled forward: tests/conftest.py's jit_forward in
# a module, the session's persistent compilation cache across modules.
V3_SHAPE = (2, 200, 136, 3)
V3_UPSAMPLE = {"dfc_upsample": "nearest"}


def test_registry_lists_the_timm_names():
    assert sorted(list_models()) == sorted(SPEC_COUNTS)


@pytest.mark.parametrize("name", list(SPEC_COUNTS))
@pytest.mark.slow
def test_param_and_mac_counts_equal_the_reference(name):
    params, macs, deploy_params, deploy_macs = SPEC_COUNTS[name]

    # Counting needs shapes only: abstract models (nnx.eval_shape) skip initialising millions of weights, and one
    # abstract build serves both forms (fuse copies its input).
    def build():
        model = create_model(name)
        return model, (fuse(model) if deploy_params is not None else None)

    model, deployed = nnx.eval_shape(build)
    assert count_params(model) == params
    assert count_macs(model, 224) == macs
    if deploy_params is not None:
        assert count_params(deployed) == deploy_params
        assert count_macs(deployed, 224) == deploy_macs


@pytest.mark.slow
def test_headless_model_drops_exactly_the_classifier():
    features = create_model("ghostnet_100", num_classes=0)
    assert count_params(features) == 3_901_508
    features.eval()
    assert jit_forward(features, images((2, 64, 64, 3))).shape == (2, 1280)


@pytest.mark.slow
def test_fused_v3_equals_multi_branch_v3_in_eval_mode():
    # The fusion maths does not depend on the width: one width here (the overrides below vary the branches), and
    # every width's deploy form against timm's in tests/test_convert.py.
    model = create_model("ghostnetv3_050", rngs=nnx.Rngs(1), **V3_UPSAMPLE)
    randomise_jax_batchnorm(model, seed=1)
    model.eval()
    x = images(V3_SHAPE)
    expected = jit_forward(model, x)
    deployed = fuse(model)
    assert not any(isinstance(m, RepConv) for _, m in nnx.iter_graph(deployed))
    assert any(isinstance(m, RepConv) for _, m in nnx.iter_graph(model)), "fuse must not modify its input"
    np.testing.assert_allclose(np.asarray(jit_forward(deployed, x)), np.asarray(expected), atol=1e-5)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(num_conv_branches=1),
        dict(num_conv_branches=4),
        dict(scale_branch=False),
        dict(identity_branch=False),
        dict(num_conv_branches=2, scale_branch=False, identity_branch=False),
    ],
)
@pytest.mark.slow
def test_v3_ablation_overrides_change_branches_and_still_fuse_exactly(overrides):
    base = nnx.eval_shape(lambda: create_model("ghostnetv3_050"))
    model = create_model("ghostnetv3_050", rngs=nnx.Rngs(2), **overrides, **V3_UPSAMPLE)
    sites = [m for _, m in nnx.iter_graph(model) if isinstance(m, RepConv)]
    assert all(len(site.branches) == overrides.get("num_conv_branches", 3) for site in sites)
    assert any(site.scale_branch is not None for site in sites) == overrides.get("scale_branch", True)
    assert any(site.identity_branch is not None for site in sites) == overrides.get("identity_branch", True)
    # A branch's parameters are a conv kernel plus BN scale and bias, so counts move by whole branches.
    if overrides == dict(num_conv_branches=1):
        branch_params = sum(count_params(site.branches[0]) for site in sites)
        assert count_params(base) - count_params(model) == 2 * branch_params
    # Whatever the branches, the deploy form is the same network.
    assert count_params(fuse(model)) == 2_853_176
    randomise_jax_batchnorm(model, seed=2)
    model.eval()
    x = images(V3_SHAPE)
    np.testing.assert_allclose(np.asarray(jit_forward(fuse(model), x)), np.asarray(jit_forward(model, x)), atol=1e-5)


@pytest.mark.slow
def test_any_positive_width_builds_with_reference_rounding():
    model = create_model("ghostnetv2_100", width=0.75)
    assert model.stem.conv.out_features == 12  # make_divisible(16 * 0.75, 4)
    assert model.final_conv.bn.num_features == 720
    model.eval()
    assert jit_forward(model, images((1, 64, 64, 3))).shape == (1, 1000)


@pytest.mark.slow
def test_both_dfc_upsampling_modes_run_and_differ_where_the_rules_differ():
    outputs = {}
    for method in ("bilinear", "nearest"):
        model = create_model("ghostnetv2_100", dfc_upsample=method, rngs=nnx.Rngs(3))
        randomise_jax_batchnorm(model, seed=3)
        model.eval()
        outputs[method] = np.asarray(jit_forward(model, images((1, 224, 224, 3))))
    assert all(np.isfinite(out).all() for out in outputs.values())
    assert np.abs(outputs["bilinear"] - outputs["nearest"]).max() > 1e-5


@pytest.mark.slow
def test_min_input_size_is_where_the_last_dfc_pool_becomes_empty():
    # Five stride-2 stages take 33 px to 2 px (pools to 1) and 32 px to 1 px (pools to nothing).
    assert min_input_size(dfc=True) == 33 and min_input_size(dfc=False) == 1
    model = create_model("ghostnetv3_050")
    model.eval()
    assert jit_forward(model, images((1, 33, 40, 3))).shape == (1, 1000)
    with pytest.raises(ValueError, match=r"too small.*at least 33x33"):
        model(images((1, 32, 64, 3)))
    v1 = create_model("ghostnet_050")
    v1.eval()
    assert jit_forward(v1, images((1, 16, 16, 3))).shape == (1, 1000)


def test_train_mode_updates_batch_statistics_and_applies_dropout():
    model = create_model("ghostnet_050", dropout=0.5)
    before = np.asarray(model.stem.bn.mean.get_value())
    x = images((4, 64, 64, 3))
    first, second = jit_forward(model, x), jit_forward(model, x)
    assert not np.allclose(np.asarray(model.stem.bn.mean.get_value()), before)
    assert not np.allclose(np.asarray(first), np.asarray(second))  # different dropout masks
    model.eval()
    np.testing.assert_array_equal(np.asarray(jit_forward(model, x)), np.asarray(jit_forward(model, x)))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: create_model("ghostnet_200"), "unknown model 'ghostnet_200'"),
        (lambda: create_model("ghostnet_100", width=0), "width must be a positive"),
        (lambda: create_model("ghostnet_100", width=-1.0), "width must be a positive"),
        (lambda: create_model("ghostnet_100", width=math.nan), "width must be a positive"),
        (lambda: create_model("ghostnet_100", width="wide"), "width must be a positive"),
        (lambda: create_model("ghostnet_100", num_conv_branches=2), r"unknown override\(s\) \['num_conv_branches'\]"),
        (lambda: create_model("ghostnet_100", dfc_upsample="nearest"), r"unknown override\(s\) \['dfc_upsample'\]"),
        (lambda: create_model("ghostnetv2_100", dfc_upsample="cubic"), "unknown dfc_upsample 'cubic'"),
        (lambda: create_model("ghostnetv3_100", num_conv_branches=0), "num_conv_branches must be an integer >= 1"),
        (lambda: create_model("ghostnet_100", dropout=1.0), "dropout must be in"),
        (lambda: create_model("ghostnet_100", num_classes=-1), "num_classes must be"),
    ],
)
def test_bad_arguments_raise_clear_value_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_wrong_input_layout_is_named():
    model = create_model("ghostnet_050")
    with pytest.raises(ValueError, match="expected 3 input channels"):
        model(images((1, 3, 64, 64)))


@pytest.mark.slow
def test_fast_conv_paths_give_the_same_network_in_eval_mode():
    """impl='auto' (1x1 convs as matmuls, depthwise as shifted multiply-adds on CPU) against XLA's convs."""
    model = create_model("ghostnetv3_050", rngs=nnx.Rngs(5), **V3_UPSAMPLE)
    randomise_jax_batchnorm(model, seed=5)
    model.eval()
    x = images(V3_SHAPE)
    fast = np.asarray(jit_forward(model, x))
    model.set_attributes(impl="xla", raise_if_not_found=False)
    np.testing.assert_allclose(fast, np.asarray(jit_forward(model, x)), rtol=1e-5, atol=1e-5)
