"""Backbone features (`features_only`): timm's maps, channels and strides, from timm's features-only weights."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from conftest import jit_forward, randomise_torch_batchnorm, to_nhwc
from ghostnet_jax.convert import from_torch
from ghostnet_jax.models import create_model, fold_batchnorm

# V1, V2, V3 (the last also in deploy form), all maps or a subset; 97x75 px gives odd maps at every stride.
CASES = [
    ("ghostnet_050", None, False),
    ("ghostnetv2_100", None, False),
    ("ghostnetv3_050", None, False),
    ("ghostnetv3_100", (1, 3), False),
    ("ghostnetv3_050", (0, 2, 4), True),
]


def reference(timm, name, out_indices, seed=0):
    torch.manual_seed(seed)
    model = timm.create_model(name, features_only=True, **({} if out_indices is None else {"out_indices": out_indices}))
    randomise_torch_batchnorm(model, seed)
    return model.eval()


@pytest.mark.parametrize("name, out_indices, deployed", CASES)
@pytest.mark.slow
def test_features_equal_timms_at_an_odd_size(timm, name, out_indices, deployed):
    torch_model = reference(timm, name, out_indices)
    if deployed:
        torch_model = timm.utils.reparameterize_model(torch_model)
    model = from_torch(name, torch_model.state_dict(), features_only=True, out_indices=out_indices)
    assert [(info.num_chs, info.reduction, info.module) for info in model.feature_info] == list(
        zip(
            torch_model.feature_info.channels(),
            torch_model.feature_info.reduction(),
            torch_model.feature_info.module_name(),
        )
    )
    x = np.random.default_rng(0).normal(size=(2, 3, 97, 75)).astype(np.float32)
    with torch.no_grad():
        expected = [m.numpy().transpose(0, 2, 3, 1) for m in torch_model(torch.from_numpy(x))]
    actual = [np.asarray(m) for m in jit_forward(model, to_nhwc(x))]
    assert [a.shape for a in actual] == [e.shape for e in expected]
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=0, atol=1e-4 * max(1.0, np.abs(e).max()))


def test_a_whole_networks_weights_give_the_same_backbone(timm):
    """Released weights are whole networks: their stages past the last map and their head are left out."""
    torch.manual_seed(0)
    whole = timm.create_model("ghostnetv2_100")
    randomise_torch_batchnorm(whole)
    features = timm.create_model("ghostnetv2_100", features_only=True, out_indices=(2,)).eval()
    renamed = {re.sub(r"^blocks\.(\d+)\.", r"blocks_\1.", key): value for key, value in whole.state_dict().items()}
    features.load_state_dict({key: value for key, value in renamed.items() if key in features.state_dict()})
    model = from_torch("ghostnetv2_100", whole.state_dict(), features_only=True, out_indices=(2,))
    assert len(model.blocks) == 4  # blocks.3 is the last tapped stage
    x = np.random.default_rng(0).normal(size=(1, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        (expected,) = [m.numpy().transpose(0, 2, 3, 1) for m in features(torch.from_numpy(x))]
    (actual,) = jit_forward(model, to_nhwc(x))
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=0, atol=1e-4 * max(1.0, np.abs(expected).max()))


@pytest.mark.slow
def test_remat_gives_the_same_maps_and_gradients_and_bfloat16_stays_close():
    x = jax.random.normal(jax.random.key(0), (2, 48, 40, 3))

    def loss_and_grads(model):
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        def loss(params):
            maps = nnx.merge(graphdef, params, rest, copy=True)(x)
            return sum(jnp.sum(m.astype(jnp.float32) ** 2) for m in maps), maps

        return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)

    (value, maps), grads = loss_and_grads(create_model("ghostnet_050", features_only=True))
    remat = create_model("ghostnet_050", features_only=True)
    remat.remat = "block"
    (remat_value, remat_maps), remat_grads = loss_and_grads(remat)
    np.testing.assert_allclose(remat_value, value, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(remat_maps), jax.tree.leaves(maps)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5 * float(np.abs(b).max()))
    # The recomputed forward is fused differently, so the gradients agree to rounding: measured within 3e-4 of
    # the largest gradient (V3 0.5x), whose near-zero leaves then differ relatively.
    scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(grads))
    for a, b in zip(jax.tree.leaves(remat_grads), jax.tree.leaves(grads)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-3 * scale)
    half_maps = jit_forward(create_model("ghostnet_050", features_only=True, dtype="bfloat16"), x)
    assert all(m.dtype == jnp.bfloat16 for m in half_maps)
    # bfloat16 keeps 8 mantissa bits; through 8 train-mode stages the deepest map drifts most (measured 0.088 of
    # its norm, ghostnet_050 at 48x40 px)
    for half, full in zip(half_maps, maps):
        relative = float(jnp.linalg.norm(half.astype(jnp.float32) - full) / jnp.linalg.norm(full))
        assert 0 < relative < 0.15, relative


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"features_only": True, "out_indices": (5,)}, r"out_indices \(5,\) must be indices into the 5 feature maps"),
        ({"features_only": True, "out_indices": ()}, r"out_indices \(\) must be indices"),
        ({"out_indices": (1,)}, "out_indices selects feature maps: it needs features_only=True"),
        ({"features_only": True, "dropout": 0.1}, "features_only=True builds no head"),
    ],
)
def test_bad_feature_requests_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_model("ghostnet_050", **kwargs)


@pytest.mark.slow
def test_teachers_have_no_features_only_and_the_folded_stem_tap_is_refused():
    with pytest.raises(ValueError, match="features_only/out_indices are for GhostNets; resnet18 is a teacher"):
        create_model("resnet18", features_only=True)
    folded = fold_batchnorm(create_model("ghostnet_050", features_only=True))
    with pytest.raises(ValueError, match="before its BatchNorm, which fold_batchnorm folded"):
        folded(jnp.zeros((1, 32, 32, 3)))
    assert (
        len(
            fold_batchnorm(create_model("ghostnet_050", features_only=True, out_indices=(1, 2)))(
                jnp.zeros((1, 32, 32, 3))
            )
        )
        == 2
    )
