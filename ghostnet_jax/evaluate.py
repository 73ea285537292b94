"""Top-1/top-5 accuracy of a saved checkpoint (converted or trained) on a dataset's eval split.

Read-only: the checkpoint is restored with `load_model`, which never writes, moves or renames anything. The eval
transform is the pipeline's (`data.eval_batches`, timm's resize-shorter + centre crop) with the settings the
checkpoint records (a training run's data config; timm's pretrained cfg for converted GhostNets: 224 px, crop_pct
0.875, bicubic, ImageNet mean/std), and so is the dataset; flags override them.

    python -m ghostnet_jax.evaluate --checkpoint DIR [--data imagenet2012 --data-dir DIR] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import json

from ghostnet_jax.model_checkpoint import load_model
from ghostnet_jax.data import pipeline
from ghostnet_jax.compilation_cache import add_cache_argument, use_compilation_cache
from ghostnet_jax.tool_inputs import add_transform_arguments, check_checkpoint_argument, data_config
from ghostnet_jax.training.evaluation import evaluate_model


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory (converter or training output)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    parser.add_argument("--data", default=None, help="TFDS dataset name (default: the checkpoint's)")
    parser.add_argument("--data-dir", default=None, help="TFDS data_dir (default: TFDS's)")
    parser.add_argument(
        "--folder",
        default=None,
        help="an image folder, DIR/SPLIT/CLASS/IMAGE (default: the checkpoint's, if it was trained on one)",
    )
    parser.add_argument(
        "--split", default=None, help="eval split, e.g. 'validation' or 'test[:1000]' (default: the checkpoint's)"
    )
    add_transform_arguments(parser)
    add_cache_argument(parser)
    parser.add_argument("--batch-size", type=int, default=64, help="global batch size (a multiple of the devices)")
    parser.add_argument("--dtype", default=None, help="compute dtype (default: the checkpoint's)")
    return parser


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = build_parser()
    args = parser.parse_args(argv)
    use_compilation_cache(args.compilation_cache_dir)
    check_checkpoint_argument(parser, args)
    model, spec = load_model(args.checkpoint, step=args.step, dtype=args.dtype)
    data = data_config(args, spec)
    info = pipeline.dataset_info(data)
    if info.num_classes != spec["num_classes"]:
        raise ValueError(
            f"{data.folder or data.name} has {info.num_classes} classes but the checkpoint's model "
            f"{spec['num_classes']}"
        )
    result = evaluate_model(model, pipeline.eval_batches(data, global_batch_size=args.batch_size))
    print(
        json.dumps({"checkpoint": args.checkpoint, "data": data.folder or data.name, "split": data.eval_split} | result)
    )
    return result


if __name__ == "__main__":
    main()
