"""Ahead-of-time compilation for Cloud TPU slices with XLA's real TPU compiler (libtpu), on this CPU.

Every compile of a train step costs about a minute here, so one small GhostNetV3 (0.5x, one conv branch per
re-parameterised site, 40 px, 8 images per chip) is compiled six times in all (the CLI's, float32, twice the batch,
an independent compile, two hosts) and each check reads what it needs: about 6 minutes for this file.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec

from configs.v3 import get_config
from ghostnet_jax import aot
from ghostnet_jax.tpu_topologies import CHIPS, known_topologies, topology
from ghostnet_jax.training.steps import pmap_train_step
from ghostnet_jax.training.hosts import AXIS
from ghostnet_jax.training.steps import make_train_step

ROOT = Path(__file__).resolve().parent.parent
PER_CHIP = 8
SMALL = [
    "--config.distill.alpha=0",
    "--config.model.num_conv_branches=1",
    "--config.model.scale_branch=False",
    "--config.model.identity_branch=False",
    f"--config.batch_size={4 * PER_CHIP}",
]


def small_config(dtype: str = "bfloat16", batch_size: int = 4 * PER_CHIP):
    config = get_config("fashion_mnist")
    config.distill.alpha = 0.0
    config.model.update(num_conv_branches=1, scale_branch=False, identity_branch=False, dtype=dtype)
    config.batch_size = batch_size
    return config


@pytest.fixture(scope="module")
def cli_report(tmp_path_factory):
    """The README's command on the small config for v5e-4 (2x2 chips), run as a user runs it."""
    path = tmp_path_factory.mktemp("aot") / "report.json"
    command = [
        sys.executable,
        "-m",
        "ghostnet_jax.aot",
        "--config",
        "configs/v3.py:fashion_mnist",
        *SMALL,
        "--config.model.dtype=bfloat16",
        "--topology",
        "v5e-4",
        "--json",
        str(path),
    ]
    done = subprocess.run(command, check=False, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(path.read_text()), done.stdout


@pytest.fixture(scope="module")
def v5e_programs():
    topo = topology("v5e-4")
    return topo, {dtype: aot.Programs(small_config(dtype), topo.devices()) for dtype in ("bfloat16", "float32")}


@pytest.mark.slow
def test_cli_compiles_the_train_step_for_a_v5e_slice_and_writes_the_report(cli_report):
    report, stdout = cli_report
    assert report["compiled"] and report["error"] is None
    assert (report["topology"], report["chips"], report["hosts"], report["per_chip_batch"]) == ("v5e-4", 4, 1, PER_CHIP)
    assert (
        report["hbm_capacity_bytes"] == 16 * 2**30 and 0 < report["hbm_bytes_per_chip"] < report["hbm_capacity_bytes"]
    )
    for field in ("flops_per_image", "bytes_per_image", "predicted_images_per_second_per_chip", "compile_seconds"):
        assert report[field] > 0, field
    assert "max_per_chip_batch" in report and "optimal_seconds" in report
    chip = CHIPS["v5e"]  # the prediction is the roofline of the compiler's own counts
    per_step = max(report["flops_per_image"] / chip.peak_flops, report["bytes_per_image"] / chip.hbm_bandwidth)
    assert report["predicted_images_per_second_per_chip"] == pytest.approx(1 / per_step, rel=1e-9)
    assert [p["program"] for p in report["programs"]] == ["train step", "eval step"]
    assert "train step" in stdout and "v5e-4: 4 chips on 1 host(s)" in stdout


@pytest.mark.slow
def test_tpu_program_holds_depthwise_convolutions_as_xla_convolutions(cli_report, v5e_programs):
    """The kernels follow the target devices: XLA grouped convolutions in the compiled TPU program, where the same
    step traced for the CPU writes depthwise convolutions as shifted multiply-adds."""
    report, _ = cli_report
    assert report["programs"][0]["grouped_convolutions"] > 10
    _, programs = v5e_programs
    bf16 = programs["bfloat16"]
    for platform, grouped in (("tpu", True), ("cpu", False)):
        step = make_train_step(
            bf16.graphdef, bf16.tx, bf16.schedule, bf16.config, bf16.info.num_classes, platform=platform
        )
        lowered = pmap_train_step(step, bf16.devices).lower(*bf16.train_args(PER_CHIP)).as_text()
        assert (aot.grouped_convolutions(lowered) > 10) == grouped, platform


@pytest.mark.slow
def test_bfloat16_needs_less_hbm_and_is_predicted_faster_than_float32(cli_report, v5e_programs):
    report, _ = cli_report
    topo, programs = v5e_programs
    float32 = programs["float32"]
    f32 = aot.program_report("train step", float32.train_step, float32.train_args(PER_CHIP), PER_CHIP, topo)
    assert f32.compiled
    assert report["hbm_bytes_per_chip"] < f32.hbm_bytes_per_chip
    assert report["bytes_per_image"] < f32.bytes_per_image
    assert report["predicted_images_per_second_per_chip"] > f32.predicted_images_per_second_per_chip


@pytest.mark.slow
def test_hbm_grows_with_the_per_chip_batch(cli_report, v5e_programs):
    report, _ = cli_report
    topo, programs = v5e_programs
    bf16 = programs["bfloat16"]
    double = aot.program_report("train step", bf16.train_step, bf16.train_args(2 * PER_CHIP), 2 * PER_CHIP, topo)
    assert double.compiled and double.hbm_bytes_per_chip > report["hbm_bytes_per_chip"]
    # Activations double, parameters and optimizer state do not: the per-image flops stay (within the optimizer's
    # share, 5% at this tiny size) and the per-image traffic falls.
    assert double.flops_per_image == pytest.approx(report["flops_per_image"], rel=0.1)
    assert double.bytes_per_image < report["bytes_per_image"]


@pytest.mark.slow
def test_flops_and_bytes_per_image_agree_with_an_independent_compile(cli_report, v5e_programs):
    """The same network's train step compiled here as jit(shard_map) over the same 4 chips, apart from the CLI's
    pmapped path and its per-image accounting: the compiler's counts per chip and image agree with the report's."""
    report, _ = cli_report
    _, programs = v5e_programs
    bf16 = programs["bfloat16"]
    step = make_train_step(bf16.graphdef, bf16.tx, bf16.schedule, bf16.config, bf16.info.num_classes, platform="tpu")
    mesh = Mesh(np.array(bf16.devices), (AXIS,))
    replicated, split = PartitionSpec(), PartitionSpec(AXIS)

    def per_chip(state, rest, batch):
        return step(state, rest, None, jax.tree.map(lambda x: x[0], batch))  # this chip's [1, batch, ...] block

    # The state donated, as training does: without it XLA keeps both copies and the counts differ (here 44 against
    # 52 MB per image: the in-place update costs traffic at this tiny batch).
    sharded = jax.jit(
        jax.shard_map(
            per_chip,
            mesh=mesh,
            in_specs=(replicated, replicated, split),
            out_specs=(replicated, replicated),
            check_vma=False,
        ),
        donate_argnums=(0,),
    )
    cost = sharded.lower(bf16.state, bf16.rest, bf16.batch(PER_CHIP)).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    assert cost["flops"] / PER_CHIP == pytest.approx(report["flops_per_image"], rel=0.02)
    assert cost["bytes accessed"] / PER_CHIP == pytest.approx(report["bytes_per_image"], rel=0.02)


@pytest.mark.slow
def test_compiles_for_a_two_host_slice():
    topo = topology("v4-16")
    assert (topo.chips, topo.hosts) == (8, 2)
    devices = topo.devices()
    assert len(devices) == 8 and len({d.process_index for d in devices}) == 2
    programs = aot.Programs(small_config(batch_size=8 * PER_CHIP), devices)
    report = aot.program_report("train step", programs.train_step, programs.train_args(PER_CHIP), PER_CHIP, topo)
    assert report.compiled, report.error
    assert 0 < report.hbm_bytes_per_chip < CHIPS["v4"].hbm_bytes


@pytest.mark.parametrize(
    "name, chips, hosts",
    [
        ("v4-8", 4, 1),
        ("v4-32", 16, 4),
        ("v5e-8", 8, 1),
        ("v5litepod-8", 8, 1),
        ("v5e-64", 64, 16),
        ("v5p-8", 4, 1),
        ("v6e-8", 8, 1),
        ("v6e-64", 64, 16),
    ],
)
def test_accelerator_types_name_cloud_tpu_slices(name, chips, hosts):
    topo = topology(name)
    assert (topo.chips, topo.hosts) == (chips, hosts)
    devices = topo.devices()
    assert len(devices) == chips and len({d.process_index for d in devices}) == hosts


def test_unknown_topology_is_a_clear_error_listing_the_known_ones():
    with pytest.raises(ValueError, match="unknown TPU topology 'v5e-7'.*v4-32.*v5e-8"):
        topology("v5e-7")
    assert {"v4-8", "v4-32", "v5e-8", "v5e-64", "v5p-8", "v6e-8"} <= set(known_topologies())
    done = subprocess.run(
        [sys.executable, "-m", "ghostnet_jax.aot", "--config", "configs/v3.py", "--topology", "v9-8"],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    assert "unknown TPU topology 'v9-8'" in done.stderr and "Traceback" not in done.stderr


def test_a_global_batch_that_does_not_split_over_the_chips_is_refused():
    with pytest.raises(ValueError, match="batch_size=36 is not divisible by v5e-8's 8 chips"):
        aot.per_chip_batch_of(small_config(batch_size=36), topology("v5e-8"))


def test_largest_fitting_batch_searches_doubling_then_bisecting():
    probes = []

    def fits(batch):
        probes.append(batch)
        return batch <= 200

    assert aot.largest_fitting_batch(fits, 64) == 200
    assert probes[:3] == [64, 128, 256]
    assert aot.largest_fitting_batch(lambda batch: False, 64) is None


def test_with_libtpu_installed_a_process_on_a_machine_without_tpu_starts_quietly_on_the_cpu():
    """libtpu is installed here (the test requirements) and this machine has no TPU chip: JAX on its own would try
    a TPU backend first and libtpu would print its failure to stderr in every process."""
    probe = "import jax; print(jax.devices()[0].platform)"
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}  # the tests' own setting: as a user starts
    bare = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env)
    assert "TPU" in bare.stderr  # the noise the package prevents: libtpu really is installed and really probes
    ours = subprocess.run(
        [sys.executable, "-c", "import ghostnet_jax; " + probe], capture_output=True, text=True, check=True, env=env
    )
    assert ours.stdout.strip() == bare.stdout.strip() == "cpu"
    assert ours.stderr == ""
