"""Test accuracy of one checkpoint as it is deployed: float JAX, float and int8 ONNX, float and int8 LiteRT.

    python -m experiments.deploy_accuracy --checkpoint runs/fashion_mnist/student/checkpoints \
        --out experiments/results/deploy_accuracy

Every export is built in memory as `python -m ghostnet_jax.export` builds it (int8 calibrated on the first
`--calibration-steps` batches of the training split) and run on the whole eval split of the dataset the checkpoint
records, through its eval transform. Each row gives top-1, the share of images whose top-1 equals the float JAX
model's, and the file size.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from flax import nnx

from ghostnet_jax.model_checkpoint import load_model
from ghostnet_jax.data import pipeline
from ghostnet_jax.tool_inputs import add_transform_arguments, data_config
from ghostnet_jax.export.calibration import calibration_batches
from ghostnet_jax.export.deploy import inference_function
from ghostnet_jax.export.litert import export_litert
from ghostnet_jax.export.onnx_format import INPUT_NAME, export_onnx, quantize_onnx

FORMATS = ("onnx", "onnx_int8", "tflite", "tflite_int8")


def eval_set(data, batch_size: int) -> tuple[list[np.ndarray], np.ndarray]:
    """The eval split as image batches (NHWC float32, padding removed) and all labels."""
    images, labels = [], []
    for batch in pipeline.eval_batches(data, global_batch_size=batch_size):
        keep = batch["mask"].reshape(-1) > 0
        images.append(batch["image"].reshape(-1, *batch["image"].shape[2:])[keep])
        labels.append(batch["label"].reshape(-1)[keep])
    return images, np.concatenate(labels)


def onnx_runner(model: bytes) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    return lambda images: session.run(None, {INPUT_NAME: images})[0]


def litert_runner(model: bytes) -> Callable[[np.ndarray], np.ndarray]:
    """Logits of a batch-1 LiteRT model, one image at a time (as on a device)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model)
    interpreter.allocate_tensors()
    (source,), (target,) = interpreter.get_input_details(), interpreter.get_output_details()

    def run(images: np.ndarray) -> np.ndarray:
        logits = []
        for image in images:
            interpreter.set_tensor(source["index"], image[None])
            interpreter.invoke()
            logits.append(interpreter.get_tensor(target["index"])[0].copy())
        return np.stack(logits)

    return run


def build(name: str, function, image_shape, calibration) -> tuple[bytes, Callable[[np.ndarray], np.ndarray]]:
    if name.startswith("onnx"):
        model = export_onnx(function, image_shape)
        model = quantize_onnx(model, calibration) if name.endswith("int8") else model
        return model, onnx_runner(model)
    model = export_litert(function, image_shape, calibration if name.endswith("int8") else None)
    return model, litert_runner(model)


def measure(args: argparse.Namespace) -> list[dict]:
    model, spec = load_model(args.checkpoint, dtype="float32")
    data = data_config(args, spec)
    images, labels = eval_set(data, args.batch_size)
    forward = nnx.jit(lambda model, x: model(x))
    reference = np.concatenate([np.asarray(forward(model, batch)).argmax(-1) for batch in images])
    rows = [
        {
            "format": "jax",
            "int8": False,
            "bytes": None,
            "top1": float(np.mean(reference == labels)),
            "agreement": 1.0,
            "examples": len(labels),
        }
    ]
    calibration_data = data_config(argparse.Namespace(**vars(args) | {"data": data.name, "split": "train"}), spec)
    calibration = calibration_batches(
        calibration_data, steps=args.calibration_steps, batch_size=args.calibration_batch_size
    )
    function, image_shape = inference_function(model), images[0].shape[1:]
    for name in args.formats:
        payload, run = build(name, function, image_shape, calibration)
        predicted = np.concatenate([run(batch).argmax(-1) for batch in images])
        rows.append(
            {
                "format": name.removesuffix("_int8"),
                "int8": name.endswith("int8"),
                "bytes": len(payload),
                "top1": float(np.mean(predicted == labels)),
                "agreement": float(np.mean(predicted == reference)),
                "examples": len(labels),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | weights | file size | test top-1 | top-1 equal to float JAX's |", "|---|---|---|---|---|"]
    for row in rows:
        size = "-" if row["bytes"] is None else f"{row['bytes'] / 1024:.0f} KiB"
        lines.append(
            f"| {row['format']} | {'int8' if row['int8'] else 'float32'} | {size} | {row['top1']:.4f} | "
            f"{row['agreement']:.2%} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", default=None, help="TFDS dataset (default: the checkpoint's)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--split", default="test", help="eval split")
    parser.add_argument("--formats", default=",".join(FORMATS), type=lambda s: s.split(","))
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--calibration-steps", type=int, default=8)
    parser.add_argument("--calibration-batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, help="write <out>.md and <out>.json")
    add_transform_arguments(parser)
    args = parser.parse_args(argv)
    unknown = set(args.formats) - set(FORMATS)
    if unknown:
        parser.error(f"unknown format(s) {sorted(unknown)}; choose from {FORMATS}")
    rows = measure(args)
    print(table(rows))
    if args.out:
        args.out.with_suffix(".json").write_text(json.dumps({"checkpoint": args.checkpoint, "rows": rows}, indent=2))
        args.out.with_suffix(".md").write_text(table(rows) + "\n")
    return rows


if __name__ == "__main__":
    main()
