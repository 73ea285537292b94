"""Entry point: python -m ghostnet_jax.main --config configs/v3.py[:preset] --workdir DIR [--config.a.b=value ...]

Exit codes: 0 when the run finished (or evaluated), `PREEMPTED_EXIT_CODE` (42) when SIGTERM stopped it (after a
checkpoint once training had started; rerun the same command to resume), anything else on an error.
"""

from __future__ import annotations

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, optionally with ':preset'.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory (path or URL, e.g. gs://...) for checkpoints, logs and the config.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from ghostnet_jax.training import hosts, preemption

    preemption.install()  # before anything slow: a notice during start-up ends the run at once
    logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO
    try:
        if FLAGS.config.multihost:
            hosts.initialize(FLAGS.config.distributed)
        from ghostnet_jax.training.loop import train_and_evaluate

        train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except preemption.Preempted as preempted:
        preemption.exit_preempted(preempted)
    except Exception:
        if not FLAGS.config.multihost:
            raise
        # The other processes stop at their next collective (gloo gives up after 30 s) or barrier and exit alike;
        # a normal exit would wait in jax.distributed's shutdown for them first.
        logging.exception("this process failed; exiting with code 1 at once")
        preemption.exit_at_once(1)


if __name__ == "__main__":
    app.run(main)
