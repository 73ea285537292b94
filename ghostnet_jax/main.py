"""Entry point: python -m ghostnet_jax.main --config configs/v3.py[:preset] --workdir DIR [--config.a.b=value ...]

Exit codes: 0 when the run finished (or evaluated), `PREEMPTED_EXIT_CODE` (42) when SIGTERM stopped it after a
checkpoint (rerun the same command to resume), anything else on an error.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, optionally with ':preset'.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory (path or URL, e.g. gs://...) for checkpoints, logs and the config.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO
    from ghostnet_jax.training import hosts

    if FLAGS.config.multihost:
        hosts.initialize(FLAGS.config.distributed)
    from ghostnet_jax.training.loop import PREEMPTED_EXIT_CODE, Preempted, train_and_evaluate

    try:
        train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except Preempted as preempted:
        logging.warning("%s; exiting with code %d", preempted, PREEMPTED_EXIT_CODE)
        logging.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        # The checkpoint is complete and every file is closed. The interpreter's teardown is skipped: there the
        # destruction of the tf.data iterator was measured to block for 8-40 s (and jax.distributed's shutdown then
        # waits for it on every other process), longer than a preemption notice leaves.
        os._exit(PREEMPTED_EXIT_CODE)


if __name__ == "__main__":
    app.run(main)
