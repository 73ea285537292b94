"""Entry point: python -m ghostnet_jax.main --config configs/v3.py[:preset] --workdir DIR [--config.a.b=value ...]"""

from __future__ import annotations

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, optionally with ':preset'.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and the resolved config.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO
    import jax

    if FLAGS.config.multihost:
        jax.distributed.initialize()
    from ghostnet_jax.training.loop import train_and_evaluate

    train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
