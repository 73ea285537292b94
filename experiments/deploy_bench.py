"""The `deploy` suite of `experiments.benchmark`: our exports under the runtimes a deployer would use, against timm
eager and timm exported to ONNX and run by ONNX Runtime (the anchor: what people deploy).

One network per model name, with timm's random weights and random BatchNorm statistics (so that folding BatchNorm
is real work, not the identity), V3 re-parameterised by timm (`reparameterize_model`); ours is that same network
converted (`convert_state_dict`: DFC 'nearest', timm's rule), so every runtime computes the same logits. `export_files`
writes the files once per model (in its own process); each runtime and thread count is then timed in a fresh process
(`time_runtime`), at batch 1 and the benchmark's batch, on random images:

- `jit`: our model with BatchNorm folded (`fold_batchnorm`), `impl='auto'` (our fastest CPU path), `jax.jit`, XLA CPU.
- `onnx`, `onnx_int8`: our ONNX export (`python -m ghostnet_jax.export`'s path) and its int8 QDQ model, ONNX Runtime.
- `litert`, `litert_int8`: our LiteRT export and its full-integer model, the LiteRT interpreter (its default XNNPACK
  delegate). The export is batch 1 (as on-device interpreters expect), so these rows have batch 1 only.
- `timm`: timm eager (PyTorch, `inference_mode`).
- `timm_onnx`: `torch.onnx.export` of the re-parameterised timm model (TorchScript exporter, its highest opset, 20;
  ours is 23, which changes none of the operators this network uses), dynamic batch, ONNX Runtime.

Threads: the process is first restricted to its first `threads` CPUs (`sched_setaffinity`, before any runtime is
imported), so no runtime can use more cores than asked, whatever its pools do; then each runtime is told the same
count: ONNX Runtime `intra_op_num_threads` (inter-op 1, sequential execution), LiteRT `num_threads`,
`torch.set_num_threads`, and for XLA at 1 thread `--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1`
(at 2 threads XLA sizes its pool from the CPUs it may use). The measured CPU time over wall time of the timed loop
(`cpu_per_wall`) shows what each runtime really used.

int8: calibrated on 32 and compared with float on 32 other synthetic ImageNet-like JPEGs through the ImageNet eval
transform (`benchmark.synthetic_jpegs`; no natural RGB images are available offline). With random weights the
top-1 agreement says only how far int8 moves the logits, not accuracy: the offline student's measured table
(`experiments/results/offline_student_deploy.md`, real Fashion-MNIST test images) is the accuracy figure.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

import numpy as np

RUNTIMES = ("jit", "onnx", "onnx_int8", "litert", "litert_int8", "timm", "timm_onnx")
ANCHOR = "timm_onnx"
BATCH_1_ONLY = ("litert", "litert_int8")
FILES = {
    "jit": "jax",
    "onnx": "ours.onnx",
    "onnx_int8": "ours_int8.onnx",
    "litert": "ours.tflite",
    "litert_int8": "ours_int8.tflite",
    "timm_onnx": "timm.onnx",
}  # timm eager rebuilds its model
TIMM_OPSET = 20  # the TorchScript exporter's highest
SEED = 0
BATCH_1_REPEATS = 4  # batch 1 runs this many times --repeats: its iterations are ~20x shorter and noisier
CALIBRATION, COMPARISON = (4, 8), 32  # calibration batches x images; images for int8-vs-float


def pin_threads(threads: int) -> None:
    """Restricts this process to its first `threads` CPUs and tells XLA and OpenMP the same; call it before any
    runtime is imported (they size their pools at start-up)."""
    cpus = sorted(os.sched_getaffinity(0))
    if not 1 <= threads <= len(cpus):
        raise ValueError(f"{threads} threads asked, but this process may use {len(cpus)} CPUs")
    os.sched_setaffinity(0, cpus[:threads])
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if threads == 1:
        flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()


def timm_model(name: str):
    """timm's `name` in eval mode, seeded random weights and random BatchNorm statistics, re-parameterised."""
    import timm
    import torch

    torch.manual_seed(SEED)
    model = timm.create_model(name).eval()
    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.empty(n).uniform_(0.5, 1.5, generator=generator))
                module.bias.copy_(torch.empty(n).uniform_(-0.5, 0.5, generator=generator))
                module.running_mean.copy_(torch.empty(n).uniform_(-0.5, 0.5, generator=generator))
                module.running_var.copy_(torch.empty(n).uniform_(0.5, 2.0, generator=generator))
    return timm.utils.reparameterize_model(model)


def imagenet_like(count: int, size: int, seed: int) -> np.ndarray:
    """`count` synthetic JPEGs through the ImageNet eval transform (NHWC float32), the one converted models expect."""
    import tensorflow as tf

    from experiments.benchmark import synthetic_jpegs
    from ghostnet_jax.data import transforms
    from ghostnet_jax.data.model_inputs import IMAGENET_GHOSTNET as spec

    def transform(jpeg: bytes) -> np.ndarray:
        image = transforms.resize_shorter_and_centre_crop(
            transforms.decode(tf.constant(jpeg), 3), size, spec["crop_pct"], spec["interpolation"]
        )
        return transforms.normalise(image, spec["mean"], spec["std"]).numpy()

    return np.stack([transform(jpeg) for jpeg in synthetic_jpegs(count, seed)])


def export_files(name: str, size: int, directory: str, runtimes: list[str]) -> dict:
    """Writes the files `runtimes` need for model `name` at `size` px into `directory`; returns their sizes in
    bytes, each float export's largest |logit - timm's| relative to max(1, max |timm's logit|), and each int8
    export's top-1 agreement and that same error against its float export."""
    import timm  # noqa: F401  before TensorFlow and JAX: timm's triton import segfaults after them (measured)
    import torch

    from experiments.deploy_accuracy import litert_runner, onnx_runner
    from ghostnet_jax.model_checkpoint import save_model
    from ghostnet_jax.convert import convert_state_dict
    from ghostnet_jax.export.deploy import inference_function
    from ghostnet_jax.export.litert import export_litert
    from ghostnet_jax.export.onnx_format import INPUT_NAME, OUTPUT_NAME, export_onnx, quantize_onnx

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    reference = timm_model(name)
    model, spec = convert_state_dict(name, reference.state_dict())
    function, shape = inference_function(model), (size, size, 3)
    steps, batch = CALIBRATION
    calibration = list(imagenet_like(steps * batch, size, seed=1).reshape(steps, batch, *shape))
    images = imagenet_like(COMPARISON, size, seed=2)
    with torch.no_grad():
        expected = reference(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
    payloads, logits = {}, {}
    if "jit" in runtimes:
        save_model(directory / FILES["jit"], model, spec)
    if {"onnx", "onnx_int8"} & set(runtimes):
        payloads["onnx"] = export_onnx(function, shape)
        if "onnx_int8" in runtimes:
            payloads["onnx_int8"] = quantize_onnx(payloads["onnx"], calibration)
    if {"litert", "litert_int8"} & set(runtimes):
        payloads["litert"] = export_litert(function, shape)
        if "litert_int8" in runtimes:
            payloads["litert_int8"] = export_litert(function, shape, calibration)
    if "timm_onnx" in runtimes:
        path = directory / FILES["timm_onnx"]
        torch.onnx.export(
            reference,
            torch.zeros(1, 3, size, size),
            str(path),
            opset_version=TIMM_OPSET,
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
        payloads["timm_onnx"] = path.read_bytes()
        logits["timm_onnx"] = onnx_runner(payloads["timm_onnx"])(images.transpose(0, 3, 1, 2).copy())
    for runtime, payload in payloads.items():
        (directory / FILES[runtime]).write_bytes(payload)
        if runtime != "timm_onnx":
            logits[runtime] = (onnx_runner if runtime.startswith("onnx") else litert_runner)(payload)(images)

    def error(actual: np.ndarray, reference: np.ndarray) -> float:
        return float(np.abs(actual - reference).max() / max(1.0, np.abs(reference).max()))

    result = {
        "bytes": {runtime: len(payload) for runtime, payload in payloads.items()},
        "images": len(images),
        "error_vs_timm": {
            runtime: error(out, expected) for runtime, out in logits.items() if not runtime.endswith("int8")
        },
    }
    for runtime in (r for r in logits if r.endswith("int8")):
        base = logits.get(runtime.removesuffix("_int8"), expected)
        result[runtime] = {
            "top1_agreement": float(np.mean(logits[runtime].argmax(1) == base.argmax(1))),
            "error_vs_float": error(logits[runtime], base),
        }
    return result


# --- timing, one runtime per process --------------------------------------------------------------------


def onnx_session(path: Path, threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda images: lambda: session.run(None, {session.get_inputs()[0].name: images})


def litert_interpreter(path: Path, threads: int):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    (given,), (result,) = interpreter.get_input_details(), interpreter.get_output_details()

    def run(images: np.ndarray):
        def step():
            interpreter.set_tensor(given["index"], images)
            interpreter.invoke()
            return interpreter.get_tensor(result["index"])

        return step

    return run


def jit_forward(path: Path, threads: int):
    import jax
    from flax import nnx

    from ghostnet_jax.model_checkpoint import load_model
    from ghostnet_jax.models import fold_batchnorm

    model, _ = load_model(path, dtype="float32")
    graphdef, state = nnx.split(fold_batchnorm(model))
    forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
    return lambda images: lambda: jax.block_until_ready(forward(state, images))


def timm_eager(name: str, threads: int):
    import torch

    torch.set_num_threads(threads)
    model = timm_model(name)

    def run(images: np.ndarray):
        tensor = torch.from_numpy(images)

        def step():
            with torch.inference_mode():
                return model(tensor)

        return step

    return run


def time_runtime(job: dict) -> dict:
    """`job`'s runtime at each of its batch sizes: `benchmark.timed` plus the CPU time per wall second of the timed
    iterations. Pins the threads first: call it in a fresh process."""
    pin_threads(job["threads"])
    from experiments.benchmark import random_images, timed

    runtime, path = job["side"], Path(job["directory"]) / FILES.get(job["side"], "")
    if runtime in FILES and not path.exists():
        raise FileNotFoundError(f"no {path.name}: its export failed")
    if runtime == "timm":
        runner = timm_eager(job["model"], job["threads"])
    elif runtime == "jit":
        runner = jit_forward(path, job["threads"])
    elif runtime.startswith("litert"):
        runner = litert_interpreter(path, job["threads"])
    else:
        runner = onnx_session(path, job["threads"])
    results = {}
    for batch in job["batches"]:
        images = random_images(batch, job["size"])
        step = runner(images.transpose(0, 3, 1, 2).copy() if runtime.startswith("timm") else images)
        repeats = job["repeats"] * (BATCH_1_REPEATS if batch == 1 else 1)
        usage, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        timing = timed(step, job["warmup"], repeats)
        wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
        cpu = after.ru_utime - usage.ru_utime + after.ru_stime - usage.ru_stime
        results[f"b{batch}"] = timing | {"cpu_per_wall": cpu / wall, "cpus": sorted(os.sched_getaffinity(0))}
    return results


# --- the table ---------------------------------------------------------------------------------------------


def value(batch: int, timing: dict) -> float:
    """ms at batch 1 (latency), img/s otherwise (throughput)."""
    return 1000 * timing["median_s"] if batch == 1 else batch / timing["median_s"]


def speedup(batch: int, ours: float, anchor: float) -> float:
    """How many times faster than the anchor: > 1 is faster."""
    return anchor / ours if batch == 1 else ours / anchor


def deploy_table(rows: list[dict], batch: int) -> str:
    """Per model, one line per runtime: batch-1 ms and batch-`batch` img/s at each thread count, each with its
    speed relative to timm->ONNX Runtime in the same setting; then file sizes and int8's distance from float."""
    models = list(dict.fromkeys(row["model"] for row in rows if row["kind"] == "deploy"))
    threads = sorted({row["threads"] for row in rows if row["kind"] == "deploy"})
    columns = [(b, t) for b in (1, batch) for t in threads]
    header = " | ".join(f"b{b} {t}t {'ms' if b == 1 else 'img/s'}" for b, t in columns)
    lines = [f"| model | runtime | {header} |", "|---|---|" + "---:|" * len(columns)]
    timed_rows = {(row["model"], row["threads"]): row for row in rows if row["kind"] == "deploy"}
    for model in models:
        for runtime in RUNTIMES:
            cells = []
            for b, t in columns:
                row = timed_rows.get((model, t), {})
                result, anchor = row.get(runtime), row.get(ANCHOR)
                if result is None:
                    cells.append("")
                elif "error" in result:
                    cells.append(result["error"][:60])
                elif f"b{b}" not in result:
                    cells.append("batch-1 export")
                else:
                    measured = value(b, result[f"b{b}"])
                    ratio = (
                        f" ({speedup(b, measured, value(b, anchor[f'b{b}'])):.2f}x)"
                        if anchor and "error" not in anchor
                        else ""
                    )
                    cells.append(f"{measured:.1f}{ratio}")
            if any(cells):
                lines.append(f"| {model} | {runtime} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n\n" + files_table([row for row in rows if row["kind"] == "deploy_files"])


def files_table(rows: list[dict]) -> str:
    formats = ("onnx", "onnx_int8", "litert", "litert_int8", "timm_onnx")
    lines = [
        "| model | " + " | ".join(f"{f} KiB" for f in formats) + " | int8 ONNX vs float: top-1 agreement, error "
        "| int8 LiteRT vs float: top-1 agreement, error | float exports' error vs timm |",
        "|---|" + "---:|" * len(formats) + "---|---|---|",
    ]
    for row in rows:
        files = row.get("export", {"error": "not measured"})
        if "error" in files:
            lines.append(f"| {row['model']} | {files['error'][:60]} |" + " |" * (len(formats) + 2))
            continue
        sizes = " | ".join(f"{files['bytes'][f] / 1024:.0f}" if f in files["bytes"] else "" for f in formats)
        int8 = [
            f"{files[f]['top1_agreement']:.0%} of {files['images']}, {files[f]['error_vs_float']:.3f}"
            if f in files
            else ""
            for f in ("onnx_int8", "litert_int8")
        ]
        exact = ", ".join(f"{f} {e:.1e}" for f, e in files["error_vs_timm"].items())
        lines.append(f"| {row['model']} | {sizes} | {' | '.join(int8)} | {exact} |")
    return "\n".join(lines)


def measure(job: dict) -> dict:
    """A deploy job of `benchmark.jobs` (run in a fresh process)."""
    if job["kind"] == "deploy_files":  # eager conversion compiles hundreds of tiny programs; nothing here is timed
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()
        return export_files(job["model"], job["size"], job["directory"], job["runtimes"])
    return time_runtime(job)
