"""Compile a config's train and eval steps for a Cloud TPU slice on this machine, without a TPU, and predict.

    python -m ghostnet_jax.aot --config configs/v3.py --topology v5e-8 [--config.a.b=value ...] [--json FILE]
        [--max-batch] [--noteacher-share] [--noeval-step]

The programs are the ones `main` runs (`training.loop`'s model, teacher, optimizer, EMA, Mixup/CutMix, dtype, remat
and pmapped steps), built as shapes (`nnx.eval_shape`): no weights are drawn, no data is read, a teacher is named by
its zoo name or by a checkpoint whose spec alone is read. XLA's TPU compiler (libtpu, `requirements-tpu.txt`) then
reports per chip the HBM the program needs and its flops and bytes accessed.

The prediction is a roofline: a step takes max(flops / peak FLOP/s, bytes accessed / HBM bandwidth) with the chip's
public peaks (`tpu_topologies.CHIPS`). It ignores the overlap that is never perfect and the collectives' time, so
it is a bound to compare programs and chips by, not a measurement. The compiler's own `optimal_seconds` is shown
where it is positive; for large programs it has come out negative.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from ghostnet_jax.data.pipeline import DatasetInfo, dataset_info
from ghostnet_jax.models import fuse
from ghostnet_jax.tpu_topologies import GIB, Topology, topology
from ghostnet_jax.training.config_check import validate_config
from ghostnet_jax.training.loop import step_counts
from ghostnet_jax.training.finetune import training_optimizer
from ghostnet_jax.training.optim import learning_rate_schedule
from ghostnet_jax.training.state import create_train_state, split_model
from ghostnet_jax.training.steps import make_eval_step, make_train_step, pmap_eval_step, pmap_train_step
from ghostnet_jax.training.student import model_overrides, student_model
from ghostnet_jax.training.teacher import load_teacher

IMAGENET_TRAIN_IMAGES = 1_281_167
# Split sizes of datasets a user compiles for before preparing them (TFDS knows sizes only once prepared).
KNOWN_SPLIT_SIZES = {"imagenet2012": (IMAGENET_TRAIN_IMAGES, 50_000)}


@dataclasses.dataclass
class ProgramReport:
    """What XLA's TPU compiler says of one program, per chip, and the roofline prediction from it."""

    program: str
    per_chip_batch: int
    compiled: bool
    error: str | None = None
    compile_seconds: float | None = None
    hbm_bytes_per_chip: int | None = None  # arguments + temporaries + outputs - aliased
    memory: dict[str, int] | None = None
    flops_per_image: float | None = None
    bytes_per_image: float | None = None
    optimal_seconds: float | None = None  # the compiler's estimate, None where it is not positive
    predicted_step_seconds: float | None = None
    memory_bound_share: float | None = None  # memory time / predicted time (1.0: traffic alone sets the time)
    predicted_images_per_second_per_chip: float | None = None
    grouped_convolutions: int | None = None  # convolutions with feature_group_count > 1 in the optimised HLO


def program_report(name: str, pmapped: Callable, args: tuple, per_chip_batch: int, topo: Topology) -> ProgramReport:
    """Lowers and compiles `pmapped` for `args` (shape structs) and reads the compiler's memory and cost analyses."""
    start = time.perf_counter()
    try:
        compiled = pmapped.lower(*args).compile()
    except Exception as error:
        return ProgramReport(name, per_chip_batch, compiled=False, error=_first_line(error))
    seconds = time.perf_counter() - start
    mem = compiled.memory_analysis()
    memory = {
        "argument": mem.argument_size_in_bytes,
        "output": mem.output_size_in_bytes,
        "temporary": mem.temp_size_in_bytes,
        "alias": mem.alias_size_in_bytes,
        "generated_code": mem.generated_code_size_in_bytes,
    }
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops, traffic = float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))
    compute_time, memory_time = flops / topo.chip.peak_flops, traffic / topo.chip.hbm_bandwidth
    step_time = max(compute_time, memory_time)
    optimal = float(cost.get("optimal_seconds", -1.0))
    return ProgramReport(
        name,
        per_chip_batch,
        compiled=True,
        compile_seconds=seconds,
        hbm_bytes_per_chip=memory["argument"] + memory["temporary"] + memory["output"] - memory["alias"],
        memory=memory,
        flops_per_image=flops / per_chip_batch,
        bytes_per_image=traffic / per_chip_batch,
        optimal_seconds=optimal if optimal > 0 else None,
        predicted_step_seconds=step_time,
        memory_bound_share=memory_time / step_time if step_time > 0 else None,
        predicted_images_per_second_per_chip=per_chip_batch / step_time if step_time > 0 else None,
        grouped_convolutions=grouped_convolutions(compiled.as_text()),
    )


def grouped_convolutions(hlo_text: str) -> int:
    """How many convolutions in an HLO or StableHLO text have feature_group_count > 1 (depthwise ones among them)."""
    return sum(int(count) > 1 for count in re.findall(r"feature_group_count\s*=\s*(\d+)", hlo_text))


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def abstract_dataset_info(data: ml_collections.ConfigDict) -> DatasetInfo:
    """The dataset's classes, channels and split sizes from TFDS's metadata, reading no examples; an unprepared
    dataset of `KNOWN_SPLIT_SIZES` (ImageNet) takes the sizes from there."""
    if data.name in KNOWN_SPLIT_SIZES and data.num_train is None:
        data = ml_collections.ConfigDict(data.to_dict())  # a copy: the caller's config is locked
        data.num_train, data.num_eval = KNOWN_SPLIT_SIZES[data.name]
    return dataset_info(data)


class Programs:
    """The train and eval steps `main` would run for `config`, as shapes, pmapped over `devices` (abstract TPU or
    GPU devices: kernels and the 'auto' dtype follow their platform)."""

    def __init__(self, config: ml_collections.ConfigDict, devices: list, *, with_teacher: bool = True):
        validate_config(config)
        self.config, self.devices = config, devices
        self.info = abstract_dataset_info(config.data)
        platform = devices[0].platform
        overrides = model_overrides(config, self.info.channels, platform)
        self.dtype = overrides["dtype"]  # the compute dtype, 'auto' resolved for the devices
        model = nnx.eval_shape(lambda: student_model(config, self.info.num_classes, overrides))
        self.graphdef, params, batch_stats, self.rest = split_model(model)
        steps_per_epoch, _ = step_counts(config, self.info.num_train)
        self.schedule = schedule = learning_rate_schedule(config.optim, steps_per_epoch, config.num_epochs)
        self.tx = tx = training_optimizer(config, schedule)
        self.state = jax.eval_shape(lambda p, b: create_train_state(p, b, tx, config.seed), params, batch_stats)
        teacher_graphdef, self.teacher_variables, view = (
            load_teacher(config, self.info.num_classes, self.info.channels, overrides["dtype"], abstract=True)
            if with_teacher
            else (None, None, None)
        )
        self.has_teacher = teacher_graphdef is not None
        self.train_step = pmap_train_step(
            make_train_step(
                self.graphdef, tx, schedule, config, self.info.num_classes, teacher_graphdef, view, platform=platform
            ),
            devices,
        )
        eval_model = nnx.eval_shape(
            lambda: fuse(_in_eval_mode(student_model(config, self.info.num_classes, overrides)))
        )
        eval_graphdef, self.eval_variables = nnx.split(eval_model)
        self.eval_step = pmap_eval_step(make_eval_step(eval_graphdef, platform=platform), devices)

    def batch(self, per_chip_batch: int, *, eval_mask: bool = False) -> dict[str, jax.ShapeDtypeStruct]:
        """The batch layout of `data.pipeline` (images float32 NHWC, int32 labels), split over the devices."""
        size, lead = self.config.data.image_size, (len(self.devices), per_chip_batch)
        batch = {
            "image": jax.ShapeDtypeStruct((*lead, size, size, self.info.channels), np.float32),
            "label": jax.ShapeDtypeStruct(lead, np.int32),
        }
        return batch | ({"mask": jax.ShapeDtypeStruct(lead, np.float32)} if eval_mask else {})

    def train_args(self, per_chip_batch: int) -> tuple:
        return self.state, self.rest, self.teacher_variables, self.batch(per_chip_batch)

    def eval_args(self, per_chip_batch: int) -> tuple:
        return self.eval_variables, self.batch(per_chip_batch, eval_mask=True)


def _in_eval_mode(model: nnx.Module) -> nnx.Module:
    model.eval()
    return model


def per_chip_batch_of(config: ml_collections.ConfigDict, topo: Topology) -> int:
    """The config's global batch split over the slice's chips (the split `data.pipeline` makes)."""
    if config.batch_size % topo.chips:
        raise ValueError(f"config.batch_size={config.batch_size} is not divisible by {topo.name}'s {topo.chips} chips")
    return config.batch_size // topo.chips


def largest_fitting_batch(fits: Callable[[int], bool], start: int, multiple: int = 8) -> int | None:
    """The largest per-chip batch (a multiple of `multiple`) with `fits(batch)`: doubling from `start`, then bisecting.
    None if not even `multiple` fits. Each probe is a compile (minutes for a large model)."""
    low, high = 0, None
    batch = max(multiple, start // multiple * multiple)
    while high is None:
        if fits(batch):
            low, batch = batch, batch * 2
        else:
            high = batch
    while high - low > multiple:
        middle = (low + high) // 2 // multiple * multiple
        if fits(middle):
            low = middle
        else:
            high = middle
    return low or None


def analyse(
    config: ml_collections.ConfigDict,
    topology_name: str,
    *,
    max_batch: bool = False,
    teacher_share: bool = True,
    eval_step: bool = True,
) -> dict[str, Any]:
    """Compiles the config's programs for the slice and returns the report (`--json`'s content)."""
    topo = topology(topology_name)
    per_chip = per_chip_batch_of(config, topo)
    devices = topo.devices()
    programs = Programs(config, devices)
    capacity = topo.chip.hbm_bytes
    train = program_report("train step", programs.train_step, programs.train_args(per_chip), per_chip, topo)
    reports = [train]
    if teacher_share and programs.has_teacher:
        student_only = Programs(config, devices, with_teacher=False)
        reports.append(
            program_report(
                "train step without teacher", student_only.train_step, student_only.train_args(per_chip), per_chip, topo
            )
        )
    if eval_step:
        reports.append(program_report("eval step", programs.eval_step, programs.eval_args(per_chip), per_chip, topo))

    fits = train.compiled and train.hbm_bytes_per_chip <= capacity
    largest = None
    if max_batch or (train.compiled and not fits):

        def train_fits(batch: int) -> bool:
            report = program_report("probe", programs.train_step, programs.train_args(batch), batch, topo)
            return report.compiled and report.hbm_bytes_per_chip <= capacity

        largest = largest_fitting_batch(train_fits, per_chip)
    images_per_s = train.predicted_images_per_second_per_chip
    epoch_images = config.num_epochs * IMAGENET_TRAIN_IMAGES
    hours = epoch_images / (images_per_s * topo.chips) / 3600 if images_per_s else None
    result = {
        "topology": topo.name,
        "chip": topo.chip.generation,
        "chips": topo.chips,
        "hosts": topo.hosts,
        "model": config.model.name,
        "dtype": programs.dtype,
        "remat": config.remat,
        "teacher": config.distill.teacher if programs.has_teacher else None,
        "per_chip_batch": per_chip,
        "compiled": train.compiled,
        "error": train.error,
        "hbm_bytes_per_chip": train.hbm_bytes_per_chip,
        "hbm_capacity_bytes": capacity,
        "fits": fits,
        "max_per_chip_batch": largest,
        "flops_per_image": train.flops_per_image,
        "bytes_per_image": train.bytes_per_image,
        "optimal_seconds": train.optimal_seconds,
        "predicted_step_seconds": train.predicted_step_seconds,
        "predicted_images_per_second_per_chip": images_per_s,
        "predicted_images_per_second": images_per_s * topo.chips if images_per_s else None,
        "epochs": config.num_epochs,
        "imagenet_hours": hours,
        "imagenet_chip_hours": hours * topo.chips if hours else None,
        "teacher_share": teacher_share_of(reports),
        "compile_seconds": train.compile_seconds,
        "chip_peaks": dataclasses.asdict(topo.chip),
        "programs": [dataclasses.asdict(report) for report in reports],
    }
    return result


def teacher_share_of(reports: list[ProgramReport]) -> float | None:
    """The share of the train step's predicted time that the teacher adds (1 - without / with)."""
    by_name = {report.program: report for report in reports if report.compiled}
    if "train step" not in by_name or "train step without teacher" not in by_name:
        return None
    return (
        1.0
        - by_name["train step without teacher"].predicted_step_seconds / by_name["train step"].predicted_step_seconds
    )


def format_report(result: dict[str, Any]) -> str:
    """The report as one table (a row per program) and the plan's lines beneath it."""
    capacity = result["hbm_capacity_bytes"]
    header = [
        "program",
        "compiled",
        "per-chip batch",
        "HBM/chip GiB",
        "GFLOP/img",
        "MB/img",
        "memory-bound",
        "pred. step ms",
        "compiler ms",
        "img/s/chip",
        "compile s",
    ]
    rows = []
    for p in result["programs"]:
        if not p["compiled"]:
            rows.append([p["program"], p["error"]] + [""] * (len(header) - 2))
            continue
        rows.append(
            [
                p["program"],
                "yes",
                str(p["per_chip_batch"]),
                f"{p['hbm_bytes_per_chip'] / GIB:.2f} / {capacity / GIB:.0f}",
                f"{p['flops_per_image'] / 1e9:.2f}",
                f"{p['bytes_per_image'] / 1e6:.0f}",
                f"{p['memory_bound_share']:.0%}",
                f"{p['predicted_step_seconds'] * 1e3:.1f}",
                f"{p['optimal_seconds'] * 1e3:.1f}" if p["optimal_seconds"] else "-",
                f"{p['predicted_images_per_second_per_chip']:,.0f}",
                f"{p['compile_seconds']:.0f}",
            ]
        )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [" | ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in [header, *rows]]
    lines.insert(1, "-+-".join("-" * width for width in widths))
    chip = result["chip_peaks"]
    lines.append("")
    lines.append(
        f"{result['model']} ({result['dtype']}, remat {result['remat']}, teacher {result['teacher']}) on "
        f"{result['topology']}: {result['chips']} chips on {result['hosts']} host(s); {chip['generation']} "
        f"peaks {chip['peak_flops'] / 1e12:.0f} TFLOP/s, {chip['hbm_bandwidth'] / 1e9:.0f} GB/s, "
        f"{chip['hbm_bytes'] / GIB:.0f} GiB HBM ({chip['source']})"
    )
    if result["compiled"] and not result["fits"]:
        over = (result["hbm_bytes_per_chip"] - capacity) / GIB
        fitting = result["max_per_chip_batch"]
        lines.append(
            f"does not fit: {over:.2f} GiB per chip over the {capacity / GIB:.0f} GiB HBM; "
            + (
                f"a per-chip batch of {fitting} fits (global {fitting * result['chips']})"
                if fitting
                else "no per-chip batch fits"
            )
        )
    elif result["max_per_chip_batch"]:
        lines.append(f"largest per-chip batch that fits: {result['max_per_chip_batch']}")
    if result["predicted_images_per_second"]:
        lines.append(
            f"predicted (roofline, see the module docstring): {result['predicted_images_per_second']:,.0f} "
            f"images/s for the slice; {result['epochs']:g} epochs of ImageNet-1k "
            f"({IMAGENET_TRAIN_IMAGES:,} images) in {result['imagenet_hours']:.1f} h, "
            f"{result['imagenet_chip_hours']:.0f} chip-hours"
        )
    if result["teacher_share"] is not None:
        lines.append(f"the teacher's share of the step: {result['teacher_share']:.0%}")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    from absl import app, flags

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    jax.config.update("jax_platforms", "cpu")  # this process runs nothing on a device: it only compiles
    given = flags.FLAGS
    try:
        result = analyse(
            given.config,
            given.topology,
            max_batch=given["max-batch"].value,
            teacher_share=given["teacher-share"].value,
            eval_step=given["eval-step"].value,
        )
    except (ValueError, FileNotFoundError) as error:
        raise app.UsageError(str(error)) from None
    print(format_report(result))
    if given.json:
        with open(given.json, "w") as f:
            json.dump(result, f, indent=2)
    if not result["compiled"]:
        raise SystemExit(1)


def define_flags() -> None:
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Config file, optionally with ':preset'.", lock_config=True)
    flags.DEFINE_string("topology", None, "Cloud TPU accelerator type, e.g. v5e-8, v5litepod-8, v4-32, v5p-8, v6e-8.")
    flags.DEFINE_string("json", None, "Also write the report as JSON to this file.")
    flags.DEFINE_bool("max-batch", False, "Search the largest per-chip batch that fits (a compile per probe).")
    flags.DEFINE_bool("teacher-share", True, "Also compile the train step without its teacher, for its share.")
    flags.DEFINE_bool("eval-step", True, "Also compile the eval step.")
    flags.mark_flags_as_required(["config", "topology"])


if __name__ == "__main__":
    from absl import app

    define_flags()
    app.run(main)
