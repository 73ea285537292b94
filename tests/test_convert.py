"""Converted timm weights reproduce timm's logits; official naming, deploy form, errors and the CLI."""

import re

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from conftest import jit_forward, randomise_torch_batchnorm
from ghostnet_jax.model_checkpoint import load_model, model_spec, save_model
from ghostnet_jax.convert import from_torch, main as convert_main
from ghostnet_jax.models import create_model, list_models

SIZES = [(224, 224), (200, 136)]  # square, and non-square with odd maps in the DFC stages


def reference(timm, name, seed=0):
    torch.manual_seed(seed)
    model = timm.create_model(name)
    randomise_torch_batchnorm(model, seed)
    return model.eval()


def reference_logits(model, size, seed=0):
    x = np.random.default_rng(seed).normal(size=(2, 3, *size)).astype(np.float32)
    with torch.no_grad():
        return x, model(torch.from_numpy(x)).numpy()


def assert_matches(model, x, expected):
    actual = np.asarray(jit_forward(model, x.transpose(0, 2, 3, 1)))
    tolerance = 1e-4 * max(1.0, np.abs(expected).max())
    np.testing.assert_allclose(actual, expected, rtol=0, atol=tolerance)


@pytest.mark.parametrize("name", list_models())
@pytest.mark.slow
def test_converted_weights_reproduce_timm_logits(timm, name):
    torch_model = reference(timm, name)
    model = from_torch(name, torch_model.state_dict())
    for size in SIZES:
        assert_matches(model, *reference_logits(torch_model, size))


@pytest.mark.parametrize("name", [n for n in list_models() if n.startswith("ghostnetv3")])
@pytest.mark.slow
def test_converted_deploy_form_reproduces_timm(timm, name):
    torch_model = reference(timm, name)
    deployed = timm.utils.reparameterize_model(torch_model)
    model = from_torch(name, deployed.state_dict())
    assert not any("branches" in str(path) for path, _ in __import__("flax").nnx.iter_graph(model))
    for size in SIZES:
        assert_matches(model, *reference_logits(deployed, size))


@pytest.mark.parametrize("name", ["ghostnetv2_100", "ghostnetv3_050"])
@pytest.mark.slow
def test_train_mode_forward_and_running_statistics_match_timm(timm, name):
    """Training form: batch statistics in every BN (V3: one stacked conv + BN per site) and their updates."""
    torch_model = reference(timm, name).train()
    torch_model.drop_rate = 0.0  # dropout draws differ between the frameworks; it is tested on its own
    model = from_torch(name, torch_model.state_dict())
    model.train()
    model.dropout.rate = 0.0
    x = np.random.default_rng(1).normal(size=(4, 3, 96, 80)).astype(np.float32)
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(x)).numpy()
    assert_matches(model, x, expected)
    updated = from_torch(name, torch_model.state_dict())  # timm's running statistics after the step
    ours, theirs = nnx.state(model, nnx.BatchStat), nnx.state(updated, nnx.BatchStat)
    for (path, a), (_, b) in zip(
        jax.tree_util.tree_leaves_with_path(ours), jax.tree_util.tree_leaves_with_path(theirs)
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5, err_msg=str(path))


def official_naming(state_dict):
    """timm keys -> the official repository's: `bn` in V3 branches, thop counters, an EMA wrapper."""
    renamed = {re.sub(r"(_rpr_(?:conv\.\d+|scale))\.bn1\.", r"\1.bn.", k): v for k, v in state_dict.items()}
    renamed["total_ops"], renamed["total_params"] = torch.zeros(1), torch.zeros(1)
    renamed["blocks.0.0.total_ops"] = torch.zeros(1)
    return renamed


@pytest.mark.parametrize("name", ["ghostnet_100", "ghostnetv2_100", "ghostnetv3_100"])
@pytest.mark.slow
def test_official_naming_and_ema_wrapper_convert_to_the_same_model(timm, name):
    torch_model = reference(timm, name)
    ema = reference(timm, name, seed=1)
    checkpoint = {
        "state_dict": {f"module.{k}": v for k, v in official_naming(torch_model.state_dict()).items()},
        "state_dict_ema": official_naming(ema.state_dict()),
        "epoch": 599,
    }
    assert any(".bn." in k for k in checkpoint["state_dict_ema"]) == name.startswith("ghostnetv3")
    assert_matches(from_torch(name, checkpoint), *reference_logits(ema, (224, 224)))
    assert_matches(from_torch(name, checkpoint, use_ema=False), *reference_logits(torch_model, (224, 224)))


def test_numpy_arrays_are_accepted(timm):
    torch_model = reference(timm, "ghostnet_050")
    arrays = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    # At the parity test's size: the compiled forward of ghostnet_050 is reused (tests/conftest.py's jit_forward).
    assert_matches(from_torch("ghostnet_050", arrays), *reference_logits(torch_model, SIZES[0]))


def test_mismatched_checkpoints_list_every_problem(timm):
    state = dict(reference(timm, "ghostnet_050").state_dict())
    del state["blocks.3.0.se.conv_reduce.bias"]
    state["blocks.3.0.extra.weight"] = torch.zeros(3)
    state["conv_stem.weight"] = torch.zeros(8, 3, 5, 5)
    with pytest.raises(ValueError) as error:
        from_torch("ghostnet_050", state)
    message = str(error.value)
    assert "missing (1): blocks.3.0.se.conv_reduce.bias" in message
    assert "unexpected (1): blocks.3.0.extra.weight" in message
    assert "wrong shape (1): conv_stem.weight (8, 3, 5, 5) (expected (3, 3, 3, 8))" in message
    with pytest.raises(ValueError, match=r"does not match ghostnet_100:\n  wrong shape \(4\d\d\)"):
        from_torch("ghostnet_100", reference(timm, "ghostnet_050").state_dict())  # wrong width


@pytest.mark.slow
def test_cli_writes_an_orbax_checkpoint_that_restores_the_same_model(timm, tmp_path):
    torch_model = reference(timm, "ghostnetv3_050")
    torch.save({"state_dict": torch_model.state_dict(), "epoch": 1}, tmp_path / "weights.pth.tar")
    convert_main(
        [
            "--model",
            "ghostnetv3_050",
            "--torch-checkpoint",
            str(tmp_path / "weights.pth.tar"),
            "--output",
            str(tmp_path / "converted"),
        ]
    )
    model, spec = load_model(tmp_path / "converted")
    data = spec.pop("data")
    assert spec == {
        "name": "ghostnetv3_050",
        "num_classes": 1000,
        "overrides": {"dfc_upsample": "nearest"},
        "fused": False,
    }
    # timm's pretrained cfg for the GhostNets, and ImageNet's 1000 WordNet ids in label order
    pretrained = torch_model.pretrained_cfg
    assert (data["image_size"], data["crop_pct"], data["interpolation"]) == (
        pretrained["input_size"][1],
        pretrained["crop_pct"],
        pretrained["interpolation"],
    )
    np.testing.assert_allclose(data["mean"] + data["std"], [*pretrained["mean"], *pretrained["std"]])
    assert len(data["labels"]) == 1000 and data["labels"][:2] == ["n01440764", "n01443537"]
    assert_matches(model, *reference_logits(torch_model, SIZES[0]))  # the parity test's compiled forward
    # Built as shapes, the loaded network still has a concrete dropout stream: in train mode two calls draw
    # different masks.
    model.train()
    x = np.random.default_rng(1).normal(size=(2, 40, 40, 3)).astype(np.float32)
    assert not np.allclose(np.asarray(jit_forward(model, x)), np.asarray(jit_forward(model, x)))


def test_cli_writes_nothing_on_error(timm, tmp_path):
    state = dict(reference(timm, "ghostnet_050").state_dict())
    state.pop("classifier.bias")
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="missing"):
        convert_main(
            [
                "--model",
                "ghostnet_050",
                "--torch-checkpoint",
                str(tmp_path / "broken.pth"),
                "--output",
                str(tmp_path / "out"),
            ]
        )
    assert not (tmp_path / "out").exists()
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        convert_main(
            [
                "--model",
                "ghostnet_050",
                "--torch-checkpoint",
                str(tmp_path / "absent.pth"),
                "--output",
                str(tmp_path / "out"),
            ]
        )
    assert not (tmp_path / "out").exists()


def test_loading_a_missing_checkpoint_names_the_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
        load_model(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no complete checkpoint"):
        load_model(tmp_path / "empty")


@pytest.mark.slow
def test_a_checkpoint_that_does_not_match_its_spec_is_an_error_naming_both(tmp_path):
    """The network is built from the spec as shapes only; weights of another width must still be refused."""
    spec = model_spec("ghostnet_100", num_classes=10, overrides={}, fused=False)
    save_model(tmp_path / "mislabelled", create_model("ghostnet_050", num_classes=10), spec)
    with pytest.raises(
        ValueError, match=r"mislabelled step 0 does not match its spec \{'name': 'ghostnet_100'"
    ) as error:
        load_model(tmp_path / "mislabelled")
    # the same layers at half the width: every key is there, shapes listed in key order (HWIO kernels)
    message = str(error.value)
    assert "\n  wrong shape (" in message and "missing" not in message and "unexpected" not in message
    assert "blocks.0.0.ghost2.primary_conv.conv.kernel (1, 1, 8, 4) (expected (1, 1, 16, 8))" in message
