"""ghostnet_jax against timm 1.0.31, side by side in one run: train step, inference, latency, input pipeline;
and what a distillation teacher adds to our train step.

    python -m experiments.benchmark                       # everything, CPU, prints a markdown table
    python -m experiments.benchmark --suites teacher --models ghostnetv3_100 --dtypes bfloat16 --device gpu
    python -m experiments.benchmark --suites train,infer --models ghostnet_100 --out experiments/results/cpu
    python -m experiments.benchmark --device gpu --dtype bfloat16 --suites train,infer   # see gpu_benchmark.sh
    python -m experiments.benchmark --suites deploy --repeats 5 --warmup 1   # exports vs timm->ONNX Runtime
    python -m experiments.benchmark --suites tpu --dtypes bfloat16 --topologies v5e-8   # compiled for TPU, predicted

Every measurement runs in a fresh subprocess (one framework, one model, one setting), so that peak memory
is that measurement's own and neither framework's thread pools or caches disturb the other. Both sides get
the same inputs, batch size and threads (torch uses all cores, as XLA does). Figures are the median over
`--repeats` timed iterations after warm-up, with the spread (min..max) beside them; "first" is the wall time
of the first iteration (ours: tracing + XLA compilation; timm: eager warm-up). Peak memory is the device's peak
allocation on GPU; on CPU, the process's peak RSS over the timed iterations alone (Linux; `peak_bytes` in the JSON
is the whole process's, compilation included). XLA's temporary buffer of our compiled train step is the
device-independent figure for its activation memory.

The model side imports neither tensorflow, tensorflow-datasets nor ml_collections: the GPU machine has none.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from collections.abc import Callable

import numpy as np

from experiments.deploy_bench import BATCH_1_ONLY, RUNTIMES, deploy_table
from experiments.deploy_bench import measure as deploy_measure

TRAIN_MODELS = ("ghostnet_100", "ghostnetv2_100", "ghostnetv3_100")
TEACHERS = ("resnet50", "beitv2_base_patch16_224", "beitv2_large_patch16_224")  # the `teacher` suite's defaults
OFFLINE_SIZE = 40  # the fashion_mnist preset's input size (one channel there; three here, like timm's models)
NUM_CLASSES = 1000
ROW_KEYS = ("label", "kind", "model", "threads")  # what a table row keeps of its jobs


def timed(fn: Callable[[], object], warmup: int, repeats: int) -> dict:
    """First-call seconds, then per-iteration seconds (median, min, max) over `repeats` after `warmup`; on Linux
    also the process's peak RSS before the timed iterations (`warmup_peak_bytes`: start-up, compilation, warm-up)
    and over them alone (`steps_peak_bytes`), see `reset_peak_rss`."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    for _ in range(warmup):
        fn()
    warmup_peak = reset_peak_rss()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    peaks = {} if warmup_peak is None else {"warmup_peak_bytes": warmup_peak, "steps_peak_bytes": peak_rss()}
    return {"first_s": first, "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)} | peaks


def reset_peak_rss() -> int | None:
    """Returns the peak RSS so far and sets the kernel's peak-RSS mark (VmHWM) to the current RSS, so that a later
    `peak_rss()` is the peak of what runs after this call: the steps alone, without compilation or timm's eager
    warm-up. The reset also resets `getrusage`'s `ru_maxrss`, so the lifetime peak is the larger of the two.
    Linux only (`/proc/self/clear_refs`, value 5); None elsewhere."""
    before = peak_rss()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return before


def peak_rss() -> int:
    """The process's peak RSS in bytes since start or the last `reset_peak_rss()` (`ru_maxrss`, which on Linux
    follows the kernel's VmHWM mark)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def random_images(batch: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype(np.float32)


# --- ghostnet_jax ----------------------------------------------------------------------------------------


def ours_model(name: str, impl: str, dtype: str = "float32", remat: str = "none"):
    from ghostnet_jax.models import allowed_overrides, create_model

    # timm upsamples the DFC gate by 'nearest': compare the same network, not our 'bilinear' default.
    overrides = {"dfc_upsample": "nearest"} if "dfc_upsample" in allowed_overrides(name) else {}
    model = create_model(name, num_classes=NUM_CLASSES, dtype=dtype, **overrides)
    model.set_attributes(impl=impl, raise_if_not_found=False)
    model.remat = remat
    return model


def activation_lower_bound(name: str, size: int, batch: int, dtype: str) -> float:
    """Bytes per image that any train step of this network must move: every convolution and matrix-product output
    written once in the forward pass and read once by the backward pass (in the compute dtype), and every float32
    parameter read, its gradient written, its momentum read and written and the parameter written (5 x 4 bytes).

    A device-independent floor for a memory-bound accelerator; BatchNorm, activations and the backward pass's own
    outputs come on top, so a real step moves several times this.
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    model = nnx.eval_shape(lambda: ours_model(name, "xla", dtype))  # shapes suffice: no weights are initialised
    graphdef, state = nnx.split(model)
    shape = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    jaxpr = jax.make_jaxpr(lambda state, x: nnx.merge(graphdef, state)(x))(state, shape)
    compute = ("conv_general_dilated", "dot_general")
    outputs = sum(
        v.aval.size * v.aval.dtype.itemsize for e in jaxpr.jaxpr.eqns if e.primitive.name in compute for v in e.outvars
    )
    params = sum(leaf.size for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))
    return (2 * outputs + 5 * 4 * params) / batch


def ours_teacher(name: str, size: int, dtype: str):
    """A distillation teacher of the zoo with random weights, in eval mode and the compute dtype: (graphdef, variables).

    A ViT's position tables are built for `size` (timm would interpolate them); the cost is the same."""
    from flax import nnx

    from ghostnet_jax.models import allowed_overrides, create_model

    overrides = {"img_size": size} if "img_size" in allowed_overrides(name) else {}
    teacher = create_model(name, num_classes=NUM_CLASSES, dtype=dtype, **overrides)
    teacher.eval()
    return nnx.split(teacher)


def build_ours_train(
    name: str, size: int, batch: int, dtype: str, impl: str, remat: str = "none", teacher: str | None = None
) -> tuple[Callable, Callable]:
    """A jitted SGD (Nesterov) step: train-mode forward, loss, backward, update; state donated.

    The model computes in `dtype` over float32 parameters (the `dtype` override, what training uses). With a
    `teacher` (a zoo name), the step is a distillation step as in training: the teacher's forward in eval mode under
    stop_gradient, outside the differentiated function, and the loss (1-alpha)*CE + alpha*KD at alpha 0.5; without,
    the loss is the CE alone (the same function). Returns a function that runs one step on a fixed batch (compiling
    on the first call), and one that gives the compiled program (for its HLO text and XLA's cost analysis).
    """
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from ghostnet_jax.training.losses import distillation_loss
    from ghostnet_jax.training.state import split_model

    graphdef, params, batch_stats, rest = split_model(ours_model(name, impl, dtype, remat))
    teacher_graphdef, teacher_variables = ours_teacher(teacher, size, dtype) if teacher else (None, None)
    tx = optax.sgd(0.1, momentum=0.9, nesterov=True)

    def step(carry, teacher_variables, images, labels):
        params, batch_stats, opt_state = carry
        teacher_logits = None
        if teacher_graphdef is not None:
            teacher_logits = jax.lax.stop_gradient(nnx.merge(teacher_graphdef, teacher_variables)(images))

        def loss_fn(params):
            model = nnx.merge(graphdef, params, batch_stats, rest, copy=True)
            targets = jax.nn.one_hot(labels, NUM_CLASSES)
            loss, _ = distillation_loss(model(images), targets, teacher_logits, alpha=0.5, temperature=1.0)
            return loss, nnx.state(model, nnx.BatchStat)

        (_, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state

    step = jax.jit(step, donate_argnums=(0,))
    images, labels = jnp.asarray(random_images(batch, size)), jnp.zeros((batch,), jnp.int32)
    carry = [(params, batch_stats, tx.init(params))]

    def run():
        carry[0] = jax.block_until_ready(step(carry[0], teacher_variables, images, labels))

    return run, lambda: step.lower(carry[0], teacher_variables, images, labels).compile()


def ours_train(
    name: str,
    size: int,
    batch: int,
    dtype: str,
    impl: str,
    remat: str,
    warmup: int,
    repeats: int,
    teacher: str | None = None,
) -> dict:
    """Timings, plus XLA's analyses of the compiled step: cost per image (flops, bytes accessed) against the floor,
    and its temporary buffer (`temp_bytes`: the activations and gradients the step keeps live at its peak, on any
    device; what remat should lower)."""
    run, compiled = build_ours_train(name, size, batch, dtype, impl, remat, teacher)
    result = timed(run, warmup, repeats)
    program = compiled()
    cost = program.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return result | {
        "flops_per_image": cost["flops"] / batch,
        "bytes_per_image": cost["bytes accessed"] / batch,
        "lower_bound_bytes_per_image": activation_lower_bound(name, size, batch, dtype),
        "temp_bytes": program.memory_analysis().temp_size_in_bytes,
    }


def ours_infer(name: str, fused: bool, size: int, batch: int, dtype: str, impl: str, warmup: int, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from ghostnet_jax.models import fuse

    model = ours_model(name, impl, dtype)
    model.eval()
    model = fuse(model) if fused else model
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
    images = jnp.asarray(random_images(batch, size))
    return timed(lambda: jax.block_until_ready(forward(state, images)), warmup, repeats)


def ours_peak_memory() -> tuple[int, bool]:
    """(peak bytes, whether that is host memory): the process's peak RSS on CPU, the device's peak on GPU."""
    import jax

    device = jax.devices()[0]
    if device.platform == "cpu":
        return peak_rss(), True
    return int(device.memory_stats().get("peak_bytes_in_use", 0)), False


# --- timm ------------------------------------------------------------------------------------------------


def _torch_device(dtype: str):
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu"), dtype == "bfloat16"


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timm_train(name: str, size: int, batch: int, dtype: str, warmup: int, repeats: int) -> dict:
    import timm
    import torch

    device, amp = _torch_device(dtype)
    model = timm.create_model(name).to(device).train()
    channels_last = device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    images = torch.from_numpy(random_images(batch, size).transpose(0, 3, 1, 2).copy()).to(device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.zeros(batch, dtype=torch.long, device=device)

    def run():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _sync()

    return timed(run, warmup, repeats)


def timm_infer(name: str, fused: bool, size: int, batch: int, dtype: str, warmup: int, repeats: int) -> dict:
    import timm
    import torch

    device, amp = _torch_device(dtype)
    model = timm.create_model(name).eval()
    model = timm.utils.reparameterize_model(model) if fused else model
    model = model.to(device)
    channels_last = device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    images = torch.from_numpy(random_images(batch, size).transpose(0, 3, 1, 2).copy()).to(device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)

    def run():
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            model(images)
        _sync()

    return timed(run, warmup, repeats)


def timm_peak_memory() -> tuple[int, bool]:
    """As `ours_peak_memory`, for torch."""
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated()), False
    return peak_rss(), True


# --- input pipelines ---------------------------------------------------------------------------------------


def synthetic_jpegs(count: int, seed: int = 0) -> list[bytes]:
    """ImageNet-like JPEGs (about 500x375, smooth content plus noise, quality 90), the same bytes for both."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        h, w = int(rng.integers(300, 450)), int(rng.integers(400, 550))
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        phase = rng.uniform(0, 6.3, size=3)
        base = np.stack([np.sin(6 * xx * (c + 1) + 4 * yy + phase[c]) for c in range(3)], axis=-1) * 90 + 128
        pixels = np.clip(base + rng.normal(0, 12, size=base.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        images.append(buffer.getvalue())
    return images


def ours_pipeline(workers: int, batch: int, count: int, repeats: int) -> dict:
    """Our tf.data train transform on `workers` threads (map parallelism and tf.data's private pool)."""
    import tensorflow as tf

    from configs.v3 import get_config
    from ghostnet_jax.data.pipeline import train_transform

    data = get_config().data
    data.num_parallel_calls = workers
    transform = train_transform(data, channels=3)
    jpegs = synthetic_jpegs(count)
    ds = tf.data.Dataset.from_tensor_slices({"image": jpegs, "label": np.zeros(count, np.int64)}).repeat().enumerate()
    ds = ds.map(lambda i, ex: transform(ex, tf.stack([i, tf.constant(0, tf.int64)])), num_parallel_calls=workers)
    options = tf.data.Options()
    options.threading.private_threadpool_size = workers
    options.threading.max_intra_op_parallelism = 1
    ds = ds.batch(batch).with_options(options)
    batches = max(count // batch, 1)

    def epochs():
        """One epoch of full batches per next(). The stream is endless and read through one iterator, as
        `train_batches` reads its stream and as timm's loader keeps its workers (persistent_workers=True): creating an
        iterator, or the map's at each pass over a finite dataset, instantiates the map function again (kernels,
        graph optimisation), a start-up cost that a training run pays once."""
        iterator = ds.as_numpy_iterator()
        while True:
            for _ in range(batches):
                next(iterator)
            yield

    epoch = epochs()
    return timed(lambda: next(epoch), 0, repeats) | {"images": batches * batch}


class _JpegDataset:
    def __init__(self, jpegs: list[bytes], transform):
        self.jpegs, self.transform = jpegs, transform

    def __len__(self) -> int:
        return len(self.jpegs)

    def __getitem__(self, index: int):
        from PIL import Image

        return self.transform(Image.open(io.BytesIO(self.jpegs[index])).convert("RGB")), 0


def timm_pipeline(workers: int, batch: int, count: int, repeats: int) -> dict:
    """timm's own train transform with the same augmentation, through a DataLoader with `workers` workers."""
    import torch
    from timm.data import create_transform

    from configs.v3 import get_config

    data = get_config().data
    transform = create_transform(
        data.image_size,
        is_training=True,
        scale=tuple(data.crop_scale),
        ratio=tuple(data.crop_ratio),
        hflip=0.5 if data.hflip else 0.0,
        auto_augment=data.randaugment,
        interpolation=data.interpolation,
        re_prob=data.random_erasing,
        re_mode="pixel",
    )
    torch.set_num_threads(1)
    loader = torch.utils.data.DataLoader(
        _JpegDataset(synthetic_jpegs(count), transform), batch_size=batch, num_workers=workers, persistent_workers=True
    )

    def run():
        for _ in loader:
            pass

    return timed(run, 0, repeats) | {"images": count}


# --- one measurement per process ---------------------------------------------------------------------------


def measure(job: dict) -> dict:
    """Runs one job (a dict from `jobs`) in this process and returns its timings and peak memory."""
    kind, side = job["kind"], job["side"]
    if kind.startswith("deploy"):
        return deploy_measure(job)
    common = dict(warmup=job["warmup"], repeats=job["repeats"]) | ({"impl": job["impl"]} if side == "ours" else {})
    if kind == "train":
        fn = functools.partial(ours_train, remat=job["remat"]) if side == "ours" else timm_train
        result = fn(job["model"], job["size"], job["batch"], job["dtype"], **common)
    elif kind == "teacher":  # ours only: what the teacher adds to our own step
        result = ours_train(
            job["model"], job["size"], job["batch"], job["dtype"], remat="none", teacher=job["teacher"], **common
        )
    elif kind in ("infer", "latency"):
        fn = ours_infer if side == "ours" else timm_infer
        result = fn(job["model"], job["fused"], job["size"], job["batch"], job["dtype"], **common)
    else:
        fn = ours_pipeline if side == "ours" else timm_pipeline
        return fn(job["workers"], job["batch"], job["images"], job["repeats"])
    peak, on_host = ours_peak_memory() if side == "ours" else timm_peak_memory()
    warmup_peak = result.pop("warmup_peak_bytes", 0)
    if not on_host:
        result.pop("steps_peak_bytes", None)  # the host's RSS says nothing about the device's memory
    return result | {"peak_bytes": max(peak, warmup_peak) if on_host else peak}


def inference_variants(models: list[str]) -> list[tuple[str, str, bool]]:
    """(label, registry name, fused): V3 both deployed (fused) and multi-branch, to show what fusion buys."""
    variants = []
    for model in models:
        if model.startswith("ghostnetv3"):
            variants += [(f"{model} fused", model, True), (f"{model} multi-branch", model, False)]
        else:
            variants.append((model, model, False))
    return variants


def jobs(args: argparse.Namespace) -> list[dict]:
    """Every (setting, side) pair to measure, ours first then timm's for each setting.

    A train setting is (model, size, dtype, remat); timm has no remat, so a remat row's timm side is the same
    measurement as the row without it (`timm_label` names the row that holds it) and runs once.
    """
    settings = []
    base = dict(warmup=args.warmup, repeats=args.repeats, impl=args.impl)
    if "train" in args.suites:
        for model in args.models:
            for size in args.train_sizes:
                for dtype in args.dtypes:
                    plain = f"train {model} {size}px b{args.batch} {dtype}"
                    for remat in args.remat:
                        label = plain + (" remat" if remat == "block" else "")
                        settings.append(
                            dict(
                                base,
                                kind="train",
                                label=label,
                                model=model,
                                size=size,
                                batch=args.batch,
                                dtype=dtype,
                                remat=remat,
                                timm_label=plain,
                            )
                        )
    for kind, batch in (("infer", args.batch), ("latency", 1)):
        if kind in args.suites:
            for label, model, fused in inference_variants(args.models):
                for dtype in args.dtypes:
                    label_ = f"{kind} {label} {args.infer_size}px b{batch} {dtype}"
                    settings.append(
                        dict(
                            base,
                            kind=kind,
                            label=label_,
                            model=model,
                            fused=fused,
                            size=args.infer_size,
                            batch=batch,
                            dtype=dtype,
                        )
                    )
    if "pipeline" in args.suites:
        settings.append(
            dict(
                base,
                kind="pipeline",
                label=f"input pipeline 224px, {args.workers} workers",
                workers=args.workers,
                batch=32,
                images=args.pipeline_images,
                repeats=args.pipeline_repeats,
            )
        )
    measured = []
    for setting in settings:
        measured.append(dict(setting, side="ours"))
        if setting.get("timm_label", setting["label"]) == setting["label"]:
            measured.append(dict(setting, side="timm"))
    if "teacher" in args.suites:
        for model in args.models:
            for dtype in args.dtypes:
                student = f"teacher {model} {args.teacher_image_size}px b{args.batch} {dtype}"
                for teacher in (None, *args.teachers):
                    measured.append(
                        dict(
                            base,
                            kind="teacher",
                            side="ours",
                            model=model,
                            teacher=teacher,
                            size=args.teacher_image_size,
                            batch=args.batch,
                            dtype=dtype,
                            label=f"{student} + {teacher}" if teacher else f"{student} alone",
                            alone=f"{student} alone",
                        )
                    )
    if "deploy" in args.suites:
        measured += deploy_jobs(args, base)
    return measured


def deploy_jobs(args: argparse.Namespace, base: dict) -> list[dict]:
    """Per model: its export files (one job), then each runtime at each thread count (batch 1 and `--batch`)."""
    measured = []
    for model in args.models:
        prefix = f"deploy {model} {args.infer_size}px"
        setting = dict(base, model=model, size=args.infer_size, directory=str(Path(args.deploy_dir) / model))
        measured.append(
            dict(setting, kind="deploy_files", side="export", label=f"{prefix} files", runtimes=args.deploy_runtimes)
        )
        for threads in args.deploy_threads:
            for runtime in args.deploy_runtimes:
                batches = [1] if runtime in BATCH_1_ONLY else sorted({1, args.batch})
                measured.append(
                    dict(
                        setting,
                        kind="deploy",
                        side=runtime,
                        label=f"{prefix} {threads}t",
                        threads=threads,
                        batches=batches,
                    )
                )
    return measured


def run_job(job: dict, timeout: int) -> dict:
    """`measure(job)` in a fresh Python process; an error or timeout is recorded, not raised."""
    command = [sys.executable, "-m", "experiments.benchmark", "--job", json.dumps(job)]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, cwd=Path(__file__).parent.parent
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode < 0:
        return {"error": f"killed by signal {-done.returncode}"}
    if done.returncode or not lines:
        return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(lines[-1][len("RESULT ") :])


def throughput(job: dict, result: dict) -> tuple[float, float, float]:
    """(median, worst, best) in the row's unit: img/s (per worker for the pipeline), or ms for latency."""
    if job["kind"] == "latency":
        return tuple(1000 * result[k] for k in ("median_s", "max_s", "min_s"))
    images = result.get("images", job["batch"]) / (job["workers"] if job["kind"] == "pipeline" else 1)
    return tuple(images / result[k] for k in ("median_s", "max_s", "min_s"))


def teacher_table(rows: list[dict], alone: dict[str, str]) -> str:
    """The `teacher` suite: the student's train step alone and with each teacher, per image.

    `alone` maps each row's label to its student-alone row's; "added" is the teacher's share of the step time.
    """
    lines = [
        "| measurement | img/s | ms/img | added ms/img (x alone) | first call | peak memory | GFLOP/img |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    by_label = {row["label"]: row for row in rows}
    for row in rows:
        ours = row.get("ours", {"error": "not measured"})
        if "error" in ours:
            lines.append(f"| {row['label']} | {ours['error']} | | | | | |")
            continue
        per_image = 1000 / row["ours_value"][0]
        base = by_label.get(alone[row["label"]], {})
        if "ours_value" in base and base is not row:
            alone_ms = 1000 / base["ours_value"][0]
            added = f"{per_image - alone_ms:.2f} ({per_image / alone_ms:.2f}x)"
        else:
            added = "-"
        lines.append(
            f"| {row['label']} | {row['ours_value'][0]:.1f} | {per_image:.2f} | {added} | {ours['first_s']:.1f} s | "
            f"{step_peak(ours) / 2**20:.0f} MiB | {ours['flops_per_image'] / 1e9:.2f} |"
        )
    return "\n".join(lines)


def step_peak(result: dict) -> int | None:
    """The memory a row reports: the peak RSS over the timed steps where Linux lets us reset the mark (warm-up and
    compilation excluded), else the process's lifetime peak (the device's peak allocation on GPU)."""
    return result.get("steps_peak_bytes", result.get("peak_bytes"))


def table(rows: list[dict]) -> str:
    unit = {"train": "img/s", "infer": "img/s", "latency": "ms", "pipeline": "img/s per core"}
    lines = [
        "| measurement | unit | ghostnet_jax | timm | ratio | first call (ours / timm) | peak memory (ours / timm) "
        "| memory ratio | GFLOP/img | MB/img accessed (floor) | XLA temp MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        ours, theirs = (row.get(side, {"error": "not measured"}) for side in ("ours", "timm"))  # a run cut short
        if "error" in ours or "error" in theirs:
            lines.append(f"| {row['label']} | | {ours.get('error', '')} | {theirs.get('error', '')} | | | | | | | |")
            continue
        a, b = row["ours_value"], row["timm_value"]
        ratio = b[0] / a[0] if row["kind"] == "latency" else a[0] / b[0]  # > 1: ours is better
        peaks = [step_peak(r) for r in (ours, theirs)]
        memory = " / ".join("-" if peak is None else f"{peak / 2**20:.0f} MiB" for peak in peaks)
        memory_ratio = "-" if None in peaks else f"{peaks[0] / peaks[1]:.2f}x"
        costs = (
            f"{ours['flops_per_image'] / 1e9:.2f} | {ours['bytes_per_image'] / 1e6:.0f} "
            f"({ours['lower_bound_bytes_per_image'] / 1e6:.0f}) | {ours['temp_bytes'] / 2**20:.0f}"
            if "flops_per_image" in ours
            else "- | - | -"
        )
        lines.append(
            f"| {row['label']} | {unit[row['kind']]} | {a[0]:.1f} ({a[1]:.1f}..{a[2]:.1f}) | "
            f"{b[0]:.1f} ({b[1]:.1f}..{b[2]:.1f}) | {ratio:.2f}x | "
            f"{ours['first_s']:.1f} s / {theirs['first_s']:.1f} s | {memory} | {memory_ratio} | {costs} |"
        )
    return "\n".join(lines)


def comma_list(text: str) -> list[str]:
    return text.split(",")


def comma_ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--suites",
        default="train,infer,latency,pipeline",
        type=comma_list,
        help="any of train,infer,latency,pipeline,teacher,deploy,tpu (tpu: experiments/tpu_aot.py)",
    )
    parser.add_argument("--models", default=",".join(TRAIN_MODELS), type=comma_list)
    parser.add_argument("--train-sizes", default=f"224,{OFFLINE_SIZE}", type=comma_ints)
    parser.add_argument("--infer-size", type=int, default=224)
    parser.add_argument(
        "--teachers",
        default=",".join(TEACHERS),
        type=lambda s: [t for t in s.split(",") if t],
        help="teacher suite: zoo names, random weights, eval mode, the compute dtype",
    )
    parser.add_argument("--teacher-image-size", type=int, default=224, help="teacher suite: student and teacher input")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="input pipeline threads / workers")
    parser.add_argument("--pipeline-images", type=int, default=256)
    parser.add_argument("--pipeline-repeats", type=int, default=3)
    parser.add_argument("--impl", default="auto", choices=["auto", "xla"], help="ghostnet_jax conv implementation")
    parser.add_argument(
        "--dtypes",
        default="float32",
        type=comma_list,
        help="compute dtypes, e.g. float32,bfloat16 (timm: autocast to bfloat16, i.e. AMP)",
    )
    parser.add_argument(
        "--remat",
        default="none",
        type=comma_list,
        help="ours: 'none', 'block' or 'none,block' (train rows; timm has no remat)",
    )
    parser.add_argument(
        "--deploy-runtimes",
        default=",".join(RUNTIMES),
        type=comma_list,
        help="deploy suite: runtimes to time (see experiments/deploy_bench.py)",
    )
    parser.add_argument(
        "--deploy-threads",
        default="1,2",
        type=comma_ints,
        help="deploy suite: thread counts (each run pinned to that many CPUs)",
    )
    parser.add_argument(
        "--topologies",
        default="v5e-8,v4-8,v5p-8,v6e-8",
        type=comma_list,
        help="tpu suite: Cloud TPU accelerator types to compile for",
    )
    parser.add_argument("--tpu-per-chip", type=int, default=128, help="tpu suite: images per chip")
    parser.add_argument(
        "--label",
        default="current",
        help="tpu suite: the rows' label: 'current' (the code as it stands) or a change's name",
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--timeout", type=int, default=900, help="seconds per measurement")
    parser.add_argument("--out", type=Path, help="write <out>.md and <out>.json")
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.job:
        print("RESULT " + json.dumps(measure(json.loads(args.job))), flush=True)
        return
    unknown = set(args.deploy_runtimes) - set(RUNTIMES)
    if unknown:
        parser.error(f"unknown --deploy-runtimes {sorted(unknown)}; choose from {RUNTIMES}")
    if not all(1 <= threads <= len(os.sched_getaffinity(0)) for threads in args.deploy_threads):
        parser.error(
            f"--deploy-threads {args.deploy_threads}: this process may use {len(os.sched_getaffinity(0))} CPUs"
        )
    os.environ.setdefault("JAX_PLATFORMS", "cuda" if args.device == "gpu" else "cpu")
    if "tpu" in args.suites:
        from experiments.tpu_aot import run_suite

        print(run_suite(args))
        args.suites = [suite for suite in args.suites if suite != "tpu"]
        if not args.suites:
            return
    with tempfile.TemporaryDirectory(prefix="deploy-") as args.deploy_dir:  # the deploy suite's exports
        rows: dict[str, dict] = {}
        start, todo = time.perf_counter(), jobs(args)
        for index, job in enumerate(todo, 1):
            result = run_job(job, args.timeout)
            row = rows.setdefault(job["label"], {key: job[key] for key in ROW_KEYS if key in job})
            row[job["side"]] = result
            if "median_s" in result:
                row[f"{job['side']}_value"] = throughput(job, result)
            print(
                f"[{index}/{len(todo)}, {time.perf_counter() - start:.0f} s] {job['label']} [{job['side']}]: {result}",
                file=sys.stderr,
                flush=True,
            )
            report(args, rows)  # after every measurement, so that a run cut short keeps what it measured
    print(report(args, rows))


def report(args: argparse.Namespace, rows: dict[str, dict]) -> str:
    """The table of the rows measured so far (written to `args.out` when given)."""
    for job in jobs(args):  # remat rows share the timm measurement of their plain row
        if job["side"] == "ours" and job["label"] in rows and job.get("timm_label", job["label"]) != job["label"]:
            plain = rows.get(job["timm_label"], {})
            rows[job["label"]].update({key: plain[key] for key in ("timm", "timm_value") if key in plain})
    header = (
        f"{time.strftime('%Y-%m-%d')}, {args.device} ({os.cpu_count()} cores), {','.join(args.dtypes)}, median of "
        f"{args.repeats} (worst..best); ratio > 1 means ghostnet_jax is faster.\n"
        f"Command: python -m experiments.benchmark {' '.join(sys.argv[1:])}\n"
    )
    teacher_rows = [row for row in rows.values() if row["kind"] == "teacher"]
    deploy_rows = [row for row in rows.values() if row["kind"].startswith("deploy")]
    other_rows = [row for row in rows.values() if row not in teacher_rows + deploy_rows]
    alone = {job["label"]: job["alone"] for job in jobs(args) if job["kind"] == "teacher"}
    tables = ([table(other_rows)] if other_rows else []) + (
        [teacher_table(teacher_rows, alone)] if teacher_rows else []
    )
    tables += [deploy_table(deploy_rows, args.batch)] if deploy_rows else []
    markdown = header + "\n" + "\n\n".join(tables)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(markdown + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(list(rows.values()), indent=1))
    return markdown


if __name__ == "__main__":
    main()
