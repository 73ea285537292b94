"""Fine-tuning against training from scratch, offline: Fashion-MNIST split into two image folders by class.

    python -m experiments.finetune_demo [--root runs/finetune_demo] [--seeds 0,1,2] [--budgets 200,1000]

1. Writes Fashion-MNIST (the Debian package's files) as two ImageFolder trees of PNGs: `source/` holds classes 0-4
   (T-shirt/top to Coat), `target/` classes 5-9 (Sandal to Ankle boot), each with its train and test split.
2. Pretrains ghostnet_050 on `source/` (configs/v1.py:fashion_mnist: 2 epochs at 40 px) through `data.folder`.
3. For each budget (steps), arm and seed, trains on `target/`: `finetune` starts from step 2's checkpoint through
   `init_from` (the classifier re-initialised: other classes) at a tenth of the preset's learning rate,
   `finetune_full_lr` likewise at the preset's rate, `scratch` from random weights at the preset's; the same
   batches, schedule shape and augmentation otherwise.
4. Writes the EMA top-1 on `target/test` (5,000 images) per budget and arm, mean and spread over the seeds, to
   experiments/results/finetune/results.md with a plot.

Every step is skipped when already done (a run whose metrics end with its final evaluation), and a half-done run
resumes from its checkpoints: rerunning the command finishes an interrupted demonstration.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import ml_collections
import numpy as np
import tensorflow as tf

from configs import v1
from experiments.records import final_eval, git_state, write_json
from experiments.stats import summarize
from ghostnet_jax.data.fashion_mnist import FILES, CLASS_NAMES, DEBIAN_DIR, read_idx
from ghostnet_jax.training.loop import step_counts, train_and_evaluate

OUT = Path(__file__).resolve().parent / "results" / "finetune"
SOURCE_CLASSES, TARGET_CLASSES = range(0, 5), range(5, 10)
BATCH = 64  # half the preset's batch (and learning rate): the 1,000-step arms take half the time on a CPU
# arm -> (starts from the pretrained weights, factor on the preset's learning rate). Fine-tuning at a tenth of the
# rate is the usual recipe (and the `finetune` preset's); at the full rate it is matched to `scratch` in everything
# but the starting weights.
ARMS = {"finetune": (True, 0.1), "finetune_full_lr": (True, 1.0), "scratch": (False, 1.0)}
BASELINE = "scratch"
DONE = "complete"  # marker file of a finished folder


def folder_name(label: int) -> str:
    return CLASS_NAMES[label].replace("/", "-")


def write_folder(root: Path, labels: range, source_dir: str = DEBIAN_DIR) -> Path:
    """root/{train,test}/CLASS/INDEX.png for the Fashion-MNIST images of `labels`; written once."""
    if (root / DONE).exists():
        return root
    for split, (images_file, labels_file) in FILES.items():
        images, classes = read_idx(f"{source_dir}/{images_file}"), read_idx(f"{source_dir}/{labels_file}")
        for label in labels:
            (root / split / folder_name(label)).mkdir(parents=True, exist_ok=True)
        for index in np.flatnonzero(np.isin(classes, list(labels))):
            path = root / split / folder_name(int(classes[index])) / f"{index}.png"
            path.write_bytes(tf.io.encode_png(images[index][:, :, None]).numpy())
    (root / DONE).touch()
    return root


def base(folder: Path, seed: int) -> ml_collections.ConfigDict:
    config = v1.get_config("fashion_mnist")
    config.data.update(folder=str(folder), cache=False)
    config.batch_size = BATCH
    config.optim.lr *= BATCH / 128
    config.seed = seed
    return config


def pretrain_config(root: Path) -> ml_collections.ConfigDict:
    return base(root / "source", 0)


def arm_config(root: Path, arm: str, seed: int, budget: int) -> ml_collections.ConfigDict:
    """`budget` steps on the target folder: the schedule spans exactly that many (num_epochs from the budget)."""
    config = base(root / "target", seed)
    steps_per_epoch = sum(1 for _ in (root / "target" / "train").rglob("*.png")) // BATCH
    config.update(num_epochs=budget / steps_per_epoch, max_steps=budget)
    config.eval_every_epochs = config.num_epochs  # evaluated once, at the end
    pretrained, lr_factor = ARMS[arm]
    if pretrained:
        config.init_from = str(root / "pretrain" / "checkpoints")
    config.optim.lr *= lr_factor
    return config


def train(config: ml_collections.ConfigDict, workdir: Path, num_train: int) -> dict[str, Any]:
    """The run's final evaluation, training it first unless it has finished."""
    final_step = step_counts(config, num_train)[1]
    if final_eval(workdir, final_step) is None:
        train_and_evaluate(config, workdir)
    return final_eval(workdir, final_step)


def markdown(results: dict[int, dict[str, dict[int, float]]], pretrained: float, command: str) -> str:
    compared = [arm for arm in ARMS if arm != BASELINE]
    lines = [
        "# Fine-tuning against training from scratch (Fashion-MNIST, offline)",
        "",
        f"ghostnet_050 at 40 px, batch {BATCH}; EMA top-1 (%) on the target classes' test split (5,000 images), "
        "mean ± sample standard deviation over seeds. `finetune` and `finetune_full_lr` start from the weights "
        f"pretrained on the other five classes ({100 * pretrained:.2f}% on their own test split) with the classifier "
        "re-initialised, at 0.1x and 1x the learning rate; `scratch` from random weights at 1x.",
        "",
        "| budget (steps) | " + " | ".join(ARMS) + " | " + " | ".join(f"{arm} − {BASELINE}" for arm in compared) + " |",
        "|---:|" + "---:|" * (len(ARMS) + len(compared)),
    ]
    for budget, arms in sorted(results.items()):
        summaries = {arm: summarize(list(arms[arm].values())) for arm in ARMS}
        cells = [
            f"{100 * s.mean:.2f}{'' if s.std is None else f' ± {100 * s.std:.2f}'} (n = {s.n})"
            for s in summaries.values()
        ]
        cells += [f"{100 * (summaries[arm].mean - summaries[BASELINE].mean):+.2f} pp" for arm in compared]
        lines.append(f"| {budget} | " + " | ".join(cells) + " |")
    lines += ["", f"Command: `{command}`", ""]
    return "\n".join(lines)


def plot(results: dict[int, dict[str, dict[int, float]]], path: Path) -> None:
    figure, ax = plt.subplots(figsize=(5, 3.6))
    budgets = sorted(results)
    for arm in ARMS:
        values = [[100 * v for v in results[b][arm].values()] for b in budgets]
        ax.errorbar(
            budgets,
            [np.mean(v) for v in values],
            yerr=[np.std(v, ddof=1) if len(v) > 1 else 0 for v in values],
            marker="o",
            capsize=3,
            label=arm,
        )
    ax.set(
        xscale="log",
        xticks=budgets,
        xticklabels=[str(b) for b in budgets],
        xlabel="training steps",
        ylabel="EMA top-1 on the target classes (%)",
        title="fine-tune vs from scratch",
    )
    ax.minorticks_off()  # the budgets alone on the log axis
    ax.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="runs/finetune_demo", help="folders and runs (resumable)")
    parser.add_argument("--seeds", default="0,1,2", type=lambda s: [int(v) for v in s.split(",")])
    parser.add_argument("--budgets", default="200,1000", type=lambda s: [int(v) for v in s.split(",")])
    parser.add_argument("--source-dir", default=DEBIAN_DIR, help="the Fashion-MNIST idx files")
    parser.add_argument("--out", default=str(OUT), help="results.md, results.json and finetune.png")
    args = parser.parse_args(argv)
    root, out = Path(args.root), Path(args.out)
    write_folder(root / "source", SOURCE_CLASSES, args.source_dir)
    write_folder(root / "target", TARGET_CLASSES, args.source_dir)
    counts = {name: sum(1 for _ in (root / name / "train").rglob("*.png")) for name in ("source", "target")}
    pretrained = train(pretrain_config(root), root / "pretrain", counts["source"])["ema_top1"]
    results: dict[int, dict[str, dict[int, float]]] = {}
    for budget in args.budgets:
        for arm in ARMS:
            for seed in args.seeds:
                final = train(
                    arm_config(root, arm, seed, budget), root / f"{budget}" / arm / f"seed{seed}", counts["target"]
                )
                results.setdefault(budget, {}).setdefault(arm, {})[seed] = final["ema_top1"]
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m experiments.finetune_demo" + ("" if argv is None else " " + " ".join(argv))
    (out / "results.md").write_text(markdown(results, pretrained, command))
    write_json(
        out / "results.json",
        {"results": {str(b): r for b, r in results.items()}, "pretrained": pretrained, "git": git_state()},
    )
    plot(results, out / "finetune.png")
    print((out / "results.md").read_text())
    print(json.dumps({"written": [str(out / name) for name in ("results.md", "results.json", "finetune.png")]}))


if __name__ == "__main__":
    main()
