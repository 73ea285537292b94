"""BEiT teachers converted from timm models with random weights give timm's logits; errors; bfloat16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from configs.common import base_config
from conftest import jit_forward
from ghostnet_jax.model_checkpoint import load_model
from ghostnet_jax.convert import from_torch, main as convert_main
from ghostnet_jax.models import create_model, list_models
from ghostnet_jax.models.beit import VARIANTS, relative_position_index
from ghostnet_jax.training.teacher import TeacherView, load_teacher

SMALL = 32  # 2x2 patches: the whole architecture, a fraction of the cost


def randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random and non-trivial: layer scales, relative position tables and q/v biases included."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, param in model.named_parameters():
            if key.endswith(("gamma_1", "gamma_2")):
                param.copy_(torch.rand(param.shape, generator=generator) * 0.9 + 0.1)
            elif key.endswith("relative_position_bias_table") or param.ndim < 2:
                offset = 1.0 if "norm" in key and key.endswith("weight") else 0.0  # LayerNorm scales around 1
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5 + offset)
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def pair_of(timm):
    """name -> (name, timm model, converted model) at 32 px, each built once per module."""
    pairs = {}

    def build(name):
        if name not in pairs:
            reference = randomised(timm.create_model(name, img_size=SMALL))
            pairs[name] = name, reference, from_torch(name, reference.state_dict(), img_size=SMALL)
        return pairs[name]

    return build


@pytest.fixture(params=sorted(VARIANTS))
def small_pair(request, pair_of):
    return pair_of(request.param)


def timm_logits(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()


def assert_close(ours: np.ndarray, reference: np.ndarray) -> None:
    tolerance = 1e-4 * max(1.0, float(np.abs(reference).max()))
    np.testing.assert_allclose(ours, reference, rtol=0, atol=tolerance)


def test_relative_position_index_matches_timm():
    from timm.models.beit import gen_relative_position_index

    for grid in (2, 3, 14):
        np.testing.assert_array_equal(relative_position_index(grid), gen_relative_position_index((grid, grid)).numpy())


@pytest.mark.slow
def test_converted_small_model_matches_timm(small_pair):
    _, reference, converted = small_pair
    x = np.random.default_rng(1).normal(size=(2, SMALL, SMALL, 3)).astype(np.float32)
    assert_close(np.asarray(jit_forward(converted, x)), timm_logits(reference, x))


def test_base_at_224_matches_timm(timm):
    reference = randomised(timm.create_model("beitv2_base_patch16_224"), seed=2)
    converted = from_torch("beitv2_base_patch16_224", reference.state_dict())
    x = np.random.default_rng(3).normal(size=(1, 224, 224, 3)).astype(np.float32)
    assert_close(np.asarray(jit_forward(converted, x)), timm_logits(reference, x))


def test_pooled_features_without_head(small_pair):
    name, reference, _ = small_pair
    state = {k: v for k, v in reference.state_dict().items() if not k.startswith("head.")}
    features = from_torch(name, state, img_size=SMALL)
    x = np.random.default_rng(4).normal(size=(2, SMALL, SMALL, 3)).astype(np.float32)
    with torch.no_grad():
        tokens = reference.forward_features(torch.from_numpy(x.transpose(0, 3, 1, 2)))
        expected = reference.forward_head(tokens, pre_logits=True)
    assert_close(np.asarray(jit_forward(features, x)), expected.numpy())


@pytest.mark.slow
def test_bfloat16_keeps_float32_params_and_logits(small_pair):
    name, reference, converted = small_pair
    half = from_torch(name, reference.state_dict(), img_size=SMALL, dtype="bfloat16")
    assert {leaf.dtype for leaf in jax.tree.leaves(nnx.state(half, nnx.Param))} == {jnp.dtype(jnp.float32)}
    x = np.random.default_rng(5).normal(size=(2, SMALL, SMALL, 3)).astype(np.float32)
    logits = jit_forward(half, x)
    expected = np.asarray(jit_forward(converted, x))
    assert logits.dtype == jnp.float32
    # bfloat16 keeps 8 mantissa bits; through 12-24 blocks the logits drift by a few percent of their range.
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=0, atol=0.05 * np.abs(expected).max())


def test_mismatched_checkpoint_lists_keys(small_pair):
    name, reference, _ = small_pair
    state = dict(reference.state_dict())
    state.pop("blocks.0.gamma_1")
    state["blocks.0.extra"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"(?s)missing \(1\): blocks\.0\.gamma_1.*unexpected \(1\): blocks\.0\.extra"):
        from_torch(name, state, img_size=SMALL)
    with pytest.raises(ValueError, match=r"wrong shape \(\d+\): blocks\.0\.attn\.relative_position_bias_table"):
        from_torch(name, reference.state_dict(), img_size=2 * SMALL)  # tables of another size are not resized


def test_bad_overrides_are_refused():
    with pytest.raises(ValueError, match="img_size must be a positive multiple of 16"):
        create_model("beitv2_base_patch16_224", img_size=40)
    with pytest.raises(ValueError, match="unknown override"):
        create_model("beitv2_base_patch16_224", width=2.0)
    with pytest.raises(ValueError, match="unknown model"):
        create_model("beit_huge")


@pytest.mark.slow
def test_registry_and_cli_round_trip(pair_of, tmp_path):
    """`--model NAME` of the convert CLI writes a checkpoint that `load_model` (teacher loading) reads back."""
    name, reference, converted = pair_of("beitv2_base_patch16_224")  # the dispatch is the same for both names
    assert set(VARIANTS) <= set(list_models(teachers=True)) and not set(VARIANTS) & set(list_models())
    source = tmp_path / "beit.npz"
    np.savez(source, **{k: v.numpy() for k, v in reference.state_dict().items()})
    output = tmp_path / "ckpt"
    arguments = [
        "--model",
        name,
        "--torch-checkpoint",
        str(source),
        "--output",
        str(output),
        "--override",
        f"img_size={SMALL}",
    ]
    with pytest.raises(SystemExit):  # argparse's error: --mean without --std, refused before anything is read
        convert_main(arguments + ["--mean", "0.5", "0.5", "0.5"])
    assert not output.exists()
    convert_main(arguments + ["--mean", "0.5", "0.5", "0.5", "--std", "0.5", "0.5", "0.5"])  # BEiT v1's constants
    loaded, spec = load_model(output)
    x = np.random.default_rng(6).normal(size=(1, SMALL, SMALL, 3)).astype(np.float32)
    assert (
        spec["name"] == name
        and spec["overrides"] == {"img_size": SMALL}
        and spec["data"]["mean"] == spec["data"]["std"] == [0.5] * 3
    )
    np.testing.assert_array_equal(np.asarray(jit_forward(loaded, x)), np.asarray(jit_forward(converted, x)))
    config = base_config()
    config.distill.teacher, config.data.image_size = str(output), 2 * SMALL
    with pytest.raises(
        ValueError,
        match=rf"takes {SMALL}x{SMALL} images but would see {2 * SMALL}x{2 * SMALL}; "
        rf"set config.distill.teacher_size={SMALL}",
    ):
        load_teacher(config, num_classes=1000, channels=3, dtype="float32")
    config.distill.teacher_size = SMALL  # the student's larger batch, resized for the teacher
    graphdef, variables, view = load_teacher(config, num_classes=1000, channels=3, dtype="float32")
    mean, std = np.asarray(config.data.mean), np.asarray(config.data.std)  # the student's: ImageNet's
    np.testing.assert_allclose(view.scale, std / 0.5, rtol=1e-12)  # x_t = (x_s * std + mean - 0.5) / 0.5
    np.testing.assert_allclose(view.offset, (mean - 0.5) / 0.5, rtol=1e-12)
    config.distill.update(teacher_mean=tuple(config.data.mean), teacher_std=tuple(config.data.std))
    assert load_teacher(config, num_classes=1000, channels=3, dtype="float32")[2] == TeacherView(SMALL)  # config wins
    np.testing.assert_array_equal(
        np.asarray(jit_forward(nnx.merge(graphdef, variables), x)), np.asarray(jit_forward(converted, x))
    )
    with pytest.raises(ValueError, match=r"3 channels\) does not fit this dataset \(1000 classes, 1 channels\)"):
        load_teacher(config, num_classes=1000, channels=1, dtype="float32")
