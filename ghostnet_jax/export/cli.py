"""`python -m ghostnet_jax.export`: a checkpoint (converted or trained) -> one deployable file.

The network is loaded as `evaluate` loads it (`load_model`, float32), put in deploy form (V3 fused, BatchNorm folded)
and exported; int8 models are calibrated on the first `--calibration-steps` batches of the training split of
`--calibration-data`, through the eval transform the checkpoint records (the same flags as `evaluate`'s override
it), at the image size it records. The file is written unnamed and linked in as `--output` at the end, so a failed
or killed export leaves nothing behind; an existing `--output` is kept unless `--force`. `--checkpoint` may be a URL
(gs://...); `--output` is a local file.

    python -m ghostnet_jax.export --checkpoint DIR --format {onnx,tflite,stablehlo} --output FILE
        [--int8 --calibration-data NAME [--data-dir DIR] [--calibration-steps K]] [--image-size 224]
"""

from __future__ import annotations

import argparse
import os
import tempfile

from ghostnet_jax.model_checkpoint import load_model
from ghostnet_jax.tool_inputs import (
    add_transform_arguments,
    apply_checkpoint_inputs,
    check_checkpoint_argument,
    data_config,
)
from ghostnet_jax.export.calibration import calibration_batches
from ghostnet_jax.export.deploy import inference_function
from ghostnet_jax.export.litert import export_litert
from ghostnet_jax.export.onnx_format import export_onnx, quantize_onnx
from ghostnet_jax.export.stablehlo import export_stablehlo
from ghostnet_jax.compilation_cache import add_cache_argument, use_compilation_cache

FORMATS = ("onnx", "tflite", "stablehlo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory (converter or training output)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--output", required=True, help="file to write (its directory must exist)")
    parser.add_argument("--force", action="store_true", help="replace an existing --output")
    parser.add_argument("--int8", action="store_true", help="static int8 quantisation (onnx, tflite)")
    parser.add_argument("--calibration-data", default=None, help="TFDS dataset whose train split calibrates int8")
    parser.add_argument("--data-dir", default=None, help="TFDS data_dir (default: TFDS's)")
    parser.add_argument("--calibration-steps", type=int, default=8, help="calibration batches")
    parser.add_argument("--calibration-batch-size", type=int, default=32)
    add_transform_arguments(parser)
    add_cache_argument(parser)
    return parser


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every mistake in the command line, reported before anything is loaded."""
    check_checkpoint_argument(parser, args)
    directory = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(directory):
        parser.error(f"--output {args.output!r}: directory {directory!r} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):  # found now, not after a long int8 calibration
        parser.error(f"--output {args.output!r}: directory {directory!r} is not writable")
    if os.path.isdir(args.output):
        parser.error(f"--output {args.output!r} is a directory; give a file name")
    if os.path.exists(args.output) and not args.force:
        parser.error(f"--output {args.output!r} already exists; pass --force to replace it")
    if args.int8 and args.format == "stablehlo":
        parser.error("--int8 is for --format onnx or tflite; StableHLO is exported in float32 only")
    if args.int8 != (args.calibration_data is not None):
        parser.error("--int8 and --calibration-data go together (int8 needs calibration images, float32 none)")
    if args.calibration_steps < 1 or args.calibration_batch_size < 1:
        parser.error("--calibration-steps and --calibration-batch-size must be at least 1")


def export(args: argparse.Namespace) -> bytes:
    """The exported model's bytes for the (checked) command line `args`."""
    model, spec = load_model(args.checkpoint, step=args.step, dtype="float32")
    apply_checkpoint_inputs(args, spec)  # the image size (and calibration transform) the checkpoint records
    function = inference_function(model)
    image_shape = (args.image_size, args.image_size, spec["overrides"].get("in_chans", 3))
    calibration = None
    if args.int8:
        data = data_config(argparse.Namespace(**vars(args), data=args.calibration_data, split="train"), spec)
        calibration = calibration_batches(data, steps=args.calibration_steps, batch_size=args.calibration_batch_size)
    if args.format == "stablehlo":
        return export_stablehlo(function, image_shape)
    if args.format == "tflite":
        return export_litert(function, image_shape, calibration)
    model_bytes = export_onnx(function, image_shape)
    return model_bytes if calibration is None else quantize_onnx(model_bytes, calibration)


def write_file(payload: bytes, path: str, *, replace: bool) -> None:
    """Writes `payload` to `path` so that `path` appears complete or not at all, and nothing else is left behind
    even if the process is killed: the file is written unnamed (Linux's O_TMPFILE) and linked in at the end, or,
    where the filesystem cannot, under a temporary name removed on any error. An existing `path` is replaced
    only with `replace` (otherwise FileExistsError, and it is left as it was)."""
    directory = os.path.dirname(os.path.abspath(path))
    temporary = None
    try:
        handle = os.open(directory, os.O_TMPFILE | os.O_WRONLY, 0o644)
    except (AttributeError, OSError):  # no O_TMPFILE here (another OS, some filesystems)
        handle, temporary = tempfile.mkstemp(dir=directory, prefix=".export-")
        os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide the model from other users
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(payload)
            file.flush()
            if temporary is None:  # named only for the instant of the rename below
                temporary = os.path.join(directory, f".export-{os.getpid()}-{os.path.basename(path)}")
                # linkat(AT_SYMLINK_FOLLOW), which naming an unnamed file needs; CPython calls it (rather than
                # link(), which fails with EXDEV here) when a dir_fd is given.
                parent = os.open(directory, os.O_RDONLY)
                try:
                    os.link(f"/proc/self/fd/{file.fileno()}", temporary, src_dir_fd=parent, follow_symlinks=True)
                finally:
                    os.close(parent)
        if replace:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)  # fails if `path` appeared meanwhile; never overwrites
    finally:
        if temporary is not None and os.path.exists(temporary):
            os.unlink(temporary)


def main(argv: list[str] | None = None) -> str:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    use_compilation_cache(args.compilation_cache_dir)
    write_file(export(args), args.output, replace=args.force)
    print(f"wrote {args.output} ({args.format}{', int8' if args.int8 else ''})")
    return args.output
