"""ResNet teachers converted from timm models with random weights and BatchNorm statistics give timm's logits;
errors; bfloat16; a converted ResNet teaches a GhostNet through the real entry point."""

import functools
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from conftest import jit_forward, randomise_torch_batchnorm
from ghostnet_jax.model_checkpoint import save_model
from ghostnet_jax.convert import convert_state_dict, from_torch
from ghostnet_jax.models import create_model, list_models
from ghostnet_jax.models.resnet import VARIANTS
from tests.test_multihost import cli_flags
from tests.test_train_loop import tiny_config

ROOT = Path(__file__).resolve().parent.parent


def randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights (timm zero-scales each block's last BatchNorm, which would hide a wrong residual branch)
    and random BatchNorm statistics."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim > 1:
                param.copy_(torch.randn(param.shape, generator=generator) * (2.0 / param[0].numel()) ** 0.5)
    randomise_torch_batchnorm(model, seed)
    return model.eval()


@pytest.fixture(scope="module")
def pair_of(timm):
    """name -> (timm model, converted model), each built once per module."""

    @functools.cache
    def build(name):
        reference = randomised(timm.create_model(name))
        return reference, from_torch(name, reference.state_dict())

    return build


def timm_logits(reference: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return reference(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()


def assert_close_to_timm(ours: jax.Array, theirs: np.ndarray) -> None:
    np.testing.assert_allclose(np.asarray(ours), theirs, rtol=0, atol=1e-4 * max(1.0, np.abs(theirs).max()))


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_converted_resnet_reproduces_timm_at_a_non_square_size(name, pair_of):
    reference, model = pair_of(name)
    images = np.random.default_rng(0).standard_normal((2, 64, 96, 3)).astype(np.float32)
    assert_close_to_timm(jit_forward(model, images), timm_logits(reference, images))


def test_converted_resnet18_reproduces_timm_at_224(pair_of):
    reference, model = pair_of("resnet18")
    images = np.random.default_rng(1).standard_normal((2, 224, 224, 3)).astype(np.float32)
    assert_close_to_timm(jit_forward(model, images), timm_logits(reference, images))


@pytest.mark.slow
def test_resnets_are_listed_with_the_teachers_and_build_headless():
    assert set(VARIANTS) <= set(list_models(teachers=True)) and not set(VARIANTS) & set(list_models())
    features = create_model("resnet50", num_classes=0, in_chans=1)
    assert features(jnp.zeros((1, 32, 32, 1))).shape == (1, 2048)
    with pytest.raises(ValueError, match="unknown override.*width"):
        create_model("resnet18", width=0.5)


def test_unknown_missing_and_mis_shaped_keys_are_listed(pair_of):
    reference, _ = pair_of("resnet18")
    state = {key: value.numpy() for key, value in reference.state_dict().items()}
    state["layer9.0.conv1.weight"] = state.pop("layer4.1.conv2.weight")
    state["fc.weight"] = state["fc.weight"][:, :100]
    with pytest.raises(ValueError) as error:
        from_torch("resnet18", state)
    message = str(error.value)
    assert "missing (1): layer4.1.conv2.weight" in message
    assert "unexpected (1): layer9.0.conv1.weight" in message
    assert "wrong shape (1): fc.weight (1000, 100) (expected (512, 1000))" in message


def test_bfloat16_resnet_keeps_float32_parameters_and_logits_close_to_float32(pair_of):
    reference, model = pair_of("resnet18")
    low = from_torch("resnet18", reference.state_dict(), dtype="bfloat16")
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(nnx.state(low, nnx.Param)))
    images = np.random.default_rng(2).standard_normal((2, 64, 64, 3)).astype(np.float32)
    exact, approximate = jit_forward(model, images), jit_forward(low, images)
    assert approximate.dtype == jnp.float32
    # bf16 keeps 8 bits of mantissa: about 0.4% per rounding, and 20 layers of them.
    np.testing.assert_allclose(approximate, exact, atol=0.05 * float(jnp.abs(exact).max()))


@pytest.mark.slow
def test_a_converted_resnet_teaches_a_ghostnet_through_main(timm, data_dir, tmp_path):
    reference = randomised(timm.create_model("resnet18", num_classes=10, in_chans=1))
    teacher, spec = convert_state_dict("resnet18", reference.state_dict(), in_chans=1)
    save_model(tmp_path / "teacher", teacher, spec)
    config = tiny_config(data_dir, max_steps=2)
    # The teacher's own view through the command line: resized (36 -> 48 px) and re-normalised.
    config.distill.update(
        alpha=0.5, teacher=str(tmp_path / "teacher"), teacher_size=48, teacher_mean=(0.5,), teacher_std=(0.5,)
    )
    command = [
        sys.executable,
        "-m",
        "ghostnet_jax.main",
        "--config",
        "configs/v1.py:fashion_mnist",
        "--workdir",
        str(tmp_path / "student"),
        *cli_flags(config),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    log = done.stdout + done.stderr
    kd = [float(line.split(" kd=")[1].split(",")[0]) for line in log.splitlines() if " kd=" in line]
    assert len(kd) == 2 and all(np.isfinite(kd)) and min(kd) > 0, log[-3000:]
