"""A quick smoke test of the benchmark: both sides run, and the table's figures are the measured ones."""

import json
import re
import sys

import jax
import pytest
from flax import nnx

from experiments import benchmark

# ghostnet_050, batch 2, two timed repeats and no warm-up: the smallest measurement that still runs every path.
QUICK = ["--models", "ghostnet_050", "--batch", "2", "--repeats", "2", "--warmup", "0"]


@pytest.mark.slow
def test_benchmark_runs_both_sides_and_tabulates_the_measured_ratios(tmp_path, monkeypatch):
    out = tmp_path / "bench"
    argv = ["benchmark", "--suites", "train,latency,deploy", *QUICK, "--train-sizes", "32", "--infer-size", "32"]
    argv += ["--remat", "none,block", "--deploy-runtimes", "onnx,timm_onnx", "--deploy-threads", "1", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    benchmark.main()
    rows = {row["label"]: row for row in json.loads(out.with_suffix(".json").read_text())}
    markdown = out.with_suffix(".md").read_text()
    check_deploy_rows(
        {label: rows.pop(label) for label in list(rows) if rows[label]["kind"].startswith("deploy")}, markdown
    )
    plain, remat = "train ghostnet_050 32px b2 float32", "train ghostnet_050 32px b2 float32 remat"
    assert set(rows) == {plain, remat, "latency ghostnet_050 32px b1 float32"}
    assert rows[remat]["timm"] == rows[plain]["timm"]  # timm has no remat: one measurement serves both rows
    for label in (plain, remat):
        ours = rows[label]["ours"]
        assert ours["bytes_per_image"] > ours["lower_bound_bytes_per_image"] > 0 and ours["flops_per_image"] > 0
        assert ours["temp_bytes"] > 0
    # Recomputing the blocks costs arithmetic: XLA counts more flops for the remat step.
    assert rows[remat]["ours"]["flops_per_image"] > rows[plain]["ours"]["flops_per_image"]
    for label, row in rows.items():
        ours, theirs = row["ours"], row["timm"]
        assert "error" not in ours and "error" not in theirs, row
        assert ours["min_s"] <= ours["median_s"] <= ours["max_s"] and ours["peak_bytes"] > 0
        for side in (ours, theirs):  # the steps' own peak, after warm-up and compilation: within the lifetime one
            assert 0 < side["steps_peak_bytes"] <= side["peak_bytes"]
        if row["kind"] == "train":
            assert row["ours_value"][0] == 2 / ours["median_s"]  # img/s = batch / median step time
            ratio = row["ours_value"][0] / row["timm_value"][0]
        else:
            assert row["ours_value"][0] == 1000 * ours["median_s"]  # latency in ms
            ratio = row["timm_value"][0] / row["ours_value"][0]
        line = next(line for line in markdown.splitlines() if line.startswith(f"| {label} |"))
        assert re.search(rf"\| {ratio:.2f}x \|", line), line
        mib = [f"{side['steps_peak_bytes'] / 2**20:.0f} MiB" for side in (ours, theirs)]
        assert f"| {mib[0]} / {mib[1]} |" in line, line


def check_deploy_rows(rows, markdown):
    """The deploy suite: our ONNX export and timm's are the same network (same logits), each timed pinned to one
    CPU, and the table's figures and ratios to timm->ONNX Runtime are the measured ones."""
    files, timings = rows["deploy ghostnet_050 32px files"]["export"], rows["deploy ghostnet_050 32px 1t"]
    assert set(files["bytes"]) == {"onnx", "timm_onnx"}
    assert abs(files["bytes"]["onnx"] / files["bytes"]["timm_onnx"] - 1) < 0.02  # the same float32 weights
    assert max(files["error_vs_timm"].values()) < 1e-4
    anchor = timings["timm_onnx"]
    for runtime in ("onnx", "timm_onnx"):
        timing = timings[runtime]
        assert all(timing[b]["cpus"] == timing["b1"]["cpus"] and len(timing[b]["cpus"]) == 1 for b in ("b1", "b2"))
        ms, anchor_ms = 1000 * timing["b1"]["median_s"], 1000 * anchor["b1"]["median_s"]
        rate, anchor_rate = 2 / timing["b2"]["median_s"], 2 / anchor["b2"]["median_s"]
        line = next(line for line in markdown.splitlines() if line.startswith(f"| ghostnet_050 | {runtime} |"))
        cells = f"{ms:.1f} ({anchor_ms / ms:.2f}x) | {rate:.1f} ({rate / anchor_rate:.2f}x)"
        assert line == f"| ghostnet_050 | {runtime} | {cells} |"


def test_profile_attributes_traced_time_to_the_compiled_instructions(tmp_path):
    """The profiler's op events carry the compiled HLO's instruction names, and each gets a category."""
    import jax
    import jax.numpy as jnp

    from experiments.profile_step import hlo_summaries, op_times

    step = jax.jit(lambda a, b: jnp.tanh(a @ b).sum(axis=0) + jnp.exp(b).sum(axis=1))
    a, b = jnp.ones((256, 128)), jnp.ones((128, 128))
    step(a, b).block_until_ready()
    summaries = hlo_summaries(step.lower(a, b).compile().as_text())
    with jax.profiler.trace(str(tmp_path)):
        for _ in range(3):
            step(a, b).block_until_ready()
    traced = {name: ps for name, ps in op_times(tmp_path).items() if name in summaries}
    assert traced and all(ps > 0 for ps in traced.values())
    categories = {summaries[name].category for name in traced}
    assert "reduce" in categories and categories <= {"reduce", "dot", "convolution", "elementwise", "copy", "tuple"}


@pytest.mark.slow
def test_teacher_suite_times_the_student_alone_and_with_each_teacher(tmp_path, monkeypatch):
    out = tmp_path / "teacher"
    argv = ["benchmark", "--suites", "teacher", *QUICK, "--teachers", "resnet18", "--teacher-image-size", "32"]
    argv += ["--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    benchmark.main()
    rows = {row["label"]: row for row in json.loads(out.with_suffix(".json").read_text())}
    alone, taught = "teacher ghostnet_050 32px b2 float32 alone", "teacher ghostnet_050 32px b2 float32 + resnet18"
    assert set(rows) == {alone, taught} and all(
        "error" not in row["ours"] and "timm" not in row for row in rows.values()
    )
    # The teacher's forward, and nothing more of it, is in the compiled step: it adds what XLA counts for that
    # forward compiled alone (the KD loss's softmax is ~1e4 flops per image).
    graphdef, variables = benchmark.ours_teacher("resnet18", 32, "float32")
    images = jax.ShapeDtypeStruct((2, 32, 32, 3), jax.numpy.float32)
    forward = jax.jit(lambda variables, x: nnx.merge(graphdef, variables)(x)).lower(variables, images).compile()
    cost = forward.cost_analysis()
    teacher_flops = (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"] / 2
    added_flops = rows[taught]["ours"]["flops_per_image"] - rows[alone]["ours"]["flops_per_image"]
    assert abs(added_flops - teacher_flops) < 0.01 * teacher_flops, (added_flops, teacher_flops)
    ms = {label: 1000 * row["ours"]["median_s"] / 2 for label, row in rows.items()}  # per image, batch 2
    line = next(line for line in out.with_suffix(".md").read_text().splitlines() if line.startswith(f"| {taught} |"))
    added = ms[taught] - ms[alone]
    assert f"| {ms[taught]:.2f} | {added:.2f} ({ms[taught] / ms[alone]:.2f}x) |" in line, line
