"""Mixed precision and rematerialisation: bfloat16 compute over float32 parameters, against float32 and timm AMP."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from configs import v3
from conftest import jit_forward, randomise_jax_batchnorm
from ghostnet_jax.model_checkpoint import load_model, model_spec, save_model
from ghostnet_jax.convert import from_torch
from ghostnet_jax.models import create_model, fuse
from ghostnet_jax.models.layers import Conv2d
from ghostnet_jax.training.config_check import validate_config
from ghostnet_jax.training.losses import cross_entropy
from ghostnet_jax.training.state import split_model

BF16, F32 = jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32)


def with_dtype(model: nnx.Module, dtype: str) -> nnx.Module:
    """A copy of `model` (same weights) computing in `dtype`."""
    copy_ = nnx.clone(model)
    copy_.set_attributes(dtype=jnp.dtype(dtype), raise_if_not_found=False)
    return copy_


def test_bfloat16_keeps_parameters_and_logits_float32_and_computes_in_bfloat16():
    model = create_model("ghostnetv3_050", num_classes=10, dtype="bfloat16")
    graphdef, state = nnx.split(model)
    assert {leaf.dtype for leaf in jax.tree.leaves(nnx.state(model, (nnx.Param, nnx.BatchStat)))} == {F32}
    x = jnp.zeros((2, 48, 48, 3), jnp.float32)

    def train_forward(state, x):
        model = nnx.merge(graphdef, state)
        return model(x), nnx.state(model, nnx.BatchStat)

    jaxpr = jax.make_jaxpr(train_forward)(state, x)
    logits_aval, *stat_avals = jaxpr.out_avals
    assert logits_aval.dtype == jnp.float32 and {a.dtype for a in stat_avals} == {F32}
    # What a layer hands to the next (convolution and matrix-product outputs, Ghost concatenations, the
    # BatchNorm outputs that feed them) is bfloat16; float32 only lives inside BatchNorm's statistics and
    # normalisation and the mean reductions' accumulators, which XLA fuses into the passes that read bfloat16.
    layer_outputs = {"conv_general_dilated", "dot_general", "concatenate"}
    produced = [
        (e.primitive.name, e.outvars[0].aval.dtype)
        for e in jaxpr.jaxpr.eqns
        if e.primitive.name in layer_outputs and e.outvars[0].aval.ndim == 4
    ]
    assert {name for name, _ in produced} == layer_outputs and all(dtype == BF16 for _, dtype in produced), produced


@pytest.mark.parametrize(
    "name, head, overrides",
    [
        ("ghostnetv3_050", "classifier", {}),
        ("resnet18", "fc", {}),
        ("beitv2_base_patch16_224", "head", {"img_size": 48}),
    ],
)
@pytest.mark.slow
def test_under_bfloat16_the_classifier_computes_in_float32(name, head, overrides):
    """The logits are the float32 product of the (bfloat16) features with the float32 head, not that product
    rounded to bfloat16 (steps of 1/16 near 10)."""
    model = create_model(name, num_classes=10, dtype="bfloat16", rngs=nnx.Rngs(1), **overrides)
    model.eval()
    images = jax.random.normal(jax.random.key(0), (4, 48, 48, 3))  # V3's DFC needs 33 px or more
    logits = np.asarray(jit_forward(model, images), np.float64)
    classifier = getattr(model, head)
    setattr(model, head, None)  # the same network up to the head: it returns the features
    features = np.asarray(jit_forward(model, images), np.float64)
    expected = features @ np.asarray(classifier.kernel.get_value(), np.float64) + np.asarray(
        classifier.bias.get_value()
    )
    scale = np.abs(expected).max()
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-6 * scale)
    rounded = np.asarray(jnp.asarray(expected, BF16), np.float64)
    assert np.abs(rounded - expected).max() > 1e3 * np.abs(logits - expected).max()


@pytest.mark.parametrize(
    "name, overrides, fused",
    [
        ("ghostnet_050", {}, False),
        ("ghostnetv2_100", {"width": 0.5}, False),
        ("ghostnetv3_050", {}, False),
        ("ghostnetv3_050", {}, True),
    ],
)
@pytest.mark.slow
def test_bfloat16_logits_are_close_to_float32_on_the_same_weights(name, overrides, fused):
    model = create_model(name, num_classes=100, **overrides)
    randomise_jax_batchnorm(model)
    model.eval()
    model = fuse(model) if fused else model
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 64, 64, 3)), jnp.float32)
    exact, half = jit_forward(model, x), jit_forward(with_dtype(model, "bfloat16"), x)
    assert half.dtype == jnp.float32
    if fused:
        assert all(
            conv.dtype == BF16 for _, conv in nnx.iter_graph(with_dtype(model, "bfloat16")) if isinstance(conv, Conv2d)
        )
        assert all(
            conv.dtype == BF16
            for _, conv in nnx.iter_graph(fuse(create_model(name, dtype="bfloat16")))
            if isinstance(conv, Conv2d)
        )
    # bfloat16 keeps 8 bits of mantissa (relative rounding 2^-9 per op) through about 60 layers: a few percent of
    # the logits' scale, and far below it in top-1 agreement.
    scale = float(jnp.abs(exact).max())
    np.testing.assert_allclose(half, exact, atol=0.05 * max(1.0, scale))
    assert float(jnp.abs(half - exact).max()) > 0, "bfloat16 must actually round"
    assert np.mean(np.argmax(half, -1) == np.argmax(exact, -1)) >= 0.75


def loss_and_grads(model: nnx.Module, images: jax.Array, labels: jax.Array):
    """(loss, gradients, BatchNorm statistics) of one train-mode step, XLA's own count of the floating-point
    operations of that compiled step and its temporary buffer (activations kept for the backward pass)."""
    graphdef, params, batch_stats, rest = split_model(model)

    def loss_fn(params):
        model = nnx.merge(graphdef, params, batch_stats, rest, copy=True)
        logits = model(images)
        return cross_entropy(logits, jax.nn.one_hot(labels, logits.shape[-1])).mean(), nnx.state(model, nnx.BatchStat)

    compiled = jax.jit(jax.value_and_grad(loss_fn, has_aux=True)).lower(params).compile()
    (loss, stats), grads = compiled(params)
    cost = compiled.cost_analysis()
    flops = (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]
    return (loss, grads, stats), flops, compiled.memory_analysis().temp_size_in_bytes


def flat(tree) -> np.ndarray:
    return np.concatenate([np.asarray(leaf, np.float64).ravel() for leaf in jax.tree.leaves(tree)])


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.slow
def test_bfloat16_train_step_gradients_are_as_close_to_float32_as_timm_amp(timm):
    """One train-mode step from the same random weights on the same batch; timm's CPU AMP (bfloat16 autocast)
    against its float32 is the reference for how far bfloat16 gradients drift at initialisation."""
    torch.manual_seed(0)
    reference = timm.create_model("ghostnet_050", num_classes=10, drop_rate=0.0).train()
    images = np.random.default_rng(0).normal(size=(32, 48, 48, 3)).astype(np.float32)
    labels = np.arange(32) % 10

    def timm_grads(amp: bool) -> np.ndarray:
        model = copy.deepcopy(reference)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            logits = model(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))
        torch.nn.functional.cross_entropy(logits.float(), torch.from_numpy(labels)).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()]).double().numpy()

    timm_cosine = cosine(timm_grads(False), timm_grads(True))
    model = from_torch("ghostnet_050", reference.state_dict(), dropout=0.0)
    model.train()
    (loss32, grads32, _), *_ = loss_and_grads(model, jnp.asarray(images), jnp.asarray(labels))
    (loss16, grads16, _), *_ = loss_and_grads(with_dtype(model, "bfloat16"), jnp.asarray(images), jnp.asarray(labels))
    assert {leaf.dtype for leaf in jax.tree.leaves(grads16)} == {F32}
    ours = cosine(flat(grads32), flat(grads16))
    assert ours >= timm_cosine - 0.03, (ours, timm_cosine)
    assert ours > 0.8 and abs(float(loss16) - float(loss32)) < 0.02 * float(loss32)


@pytest.mark.slow
def test_remat_recomputes_and_gives_the_same_loss_gradients_and_statistics():
    model = create_model("ghostnetv2_100", width=0.5, num_classes=10, dropout=0.0)
    images = jnp.asarray(np.random.default_rng(1).normal(size=(8, 48, 48, 3)), jnp.float32)
    labels = jnp.arange(8) % 10
    plain, plain_flops, plain_temp = loss_and_grads(model, images, labels)
    model.remat = "block"
    remat, remat_flops, remat_temp = loss_and_grads(model, images, labels)
    # The blocks' forward runs again in the backward pass, and the compiled step keeps fewer activations:
    # nnx.remat's recomputation was merged back into the forward by XLA's CPU compiler (same buffer either way).
    assert remat_flops > 1.15 * plain_flops and remat_temp < 0.6 * plain_temp, (remat_temp, plain_temp)
    np.testing.assert_allclose(remat[0], plain[0], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(remat[1:]), jax.tree.leaves(plain[1:])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * max(1.0, float(jnp.abs(b).max())))


@pytest.mark.slow
def test_a_bfloat16_checkpoint_restores_into_a_float32_model_and_back(tmp_path):
    model = create_model("ghostnetv3_050", num_classes=10, dtype="bfloat16")
    randomise_jax_batchnorm(model)
    spec = model_spec("ghostnetv3_050", num_classes=10, overrides={"dtype": "bfloat16"}, fused=False)
    save_model(tmp_path / "bf16", model, spec)
    as_saved, _ = load_model(tmp_path / "bf16")
    as_float32, _ = load_model(tmp_path / "bf16", dtype="float32")
    assert as_saved.dtype == BF16 and as_float32.dtype == jnp.float32
    assert all(conv.dtype == jnp.float32 for _, conv in nnx.iter_graph(as_float32) if isinstance(conv, Conv2d))
    saved = nnx.state(model, (nnx.Param, nnx.BatchStat))
    for restored in (as_saved, as_float32):
        jax.tree.map(np.testing.assert_array_equal, nnx.state(restored, (nnx.Param, nnx.BatchStat)), saved)


@pytest.mark.parametrize("dtype, message", [("float16", "float16 is not supported"), ("int8", "unknown dtype")])
def test_float16_and_unknown_dtypes_are_clear_errors(dtype, message):
    with pytest.raises(ValueError, match=message):
        create_model("ghostnet_050", dtype=dtype)
    config = v3.get_config()
    config.model.dtype = dtype
    with pytest.raises(ValueError, match=f"config.model.dtype='{dtype}'"):
        validate_config(config)
    config.model.dtype = "auto"
    config.remat = "everything"
    with pytest.raises(ValueError, match="config.remat='everything'"):
        validate_config(config)
