"""Metrics to stdout, TensorBoard and `metrics.jsonl` (process 0 only), with throughput and ETA.

`metrics.jsonl` holds one JSON object per logged step ({"kind": "train"|"eval", "step": ..., metrics}), the
machine-readable record that experiment reports are built from. A resumed run first drops the records of the steps
after its checkpoint (logged by the interrupted run, about to be redone), then appends: no step appears twice.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from etils import epath

from ghostnet_jax.storage import is_url, write_atomically


class MetricRecords:
    """`metrics.jsonl` in `workdir` (a path or URL), continued from `start_step`: later records are dropped first.

    A last line cut short (a process killed mid-write) is dropped with a warning. On object storage (gs://...)
    every append rewrites the whole object, so records are buffered and written at `flush()` (each checkpoint)
    and `close()`: what a crash loses is what the resume redoes anyway. Local files are flushed at every record.
    """

    def __init__(self, workdir: epath.Path, start_step: int):
        self.path = workdir / "metrics.jsonl"
        kept = []
        if self.path.exists():
            lines = self.path.read_text().splitlines(keepends=True)
            for number, line in enumerate(lines, 1):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    logging.warning(
                        "dropping line %d of %s, which does not parse (a write cut short): %r",
                        number,
                        self.path,
                        line[:200],
                    )
                    continue
                if record["step"] <= start_step:
                    kept.append(line if line.endswith("\n") else line + "\n")
            if kept != lines:  # rewritten atomically: a rename over the old file
                write_atomically(self.path, "".join(kept))
        self._pending: list[str] = []
        self._file = None if is_url(self.path) else self.path.open("a")  # None: buffered until flush()

    def write(self, kind: str, step: int, values: dict[str, float]) -> None:
        line = json.dumps({"kind": kind, "step": step, **values}) + "\n"
        if self._file is None:
            self._pending.append(line)
            return
        self._file.write(line)
        self._file.flush()

    def flush(self) -> None:
        """Writes the buffered records (object storage: one rewrite of the object)."""
        if self._pending:
            existing = self.path.read_text() if self.path.exists() else ""
            write_atomically(self.path, existing + "".join(self._pending))
            self._pending = []

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()


class MetricLogger:
    def __init__(self, workdir: epath.Path, *, start_step: int, total_steps: int, batch_size: int, enabled: bool):
        self.total_steps, self.batch_size, self.enabled = total_steps, batch_size, enabled
        self.interactive = enabled and sys.stdout.isatty()
        self._last_step, self._last_time = None, time.perf_counter()
        self._writer, self._records = None, None
        if enabled:
            import tensorflow as tf  # tf.summary writes TensorBoard event files

            self._writer = tf.summary.create_file_writer(str(workdir / "tensorboard"))
            self._records = MetricRecords(workdir, start_step)

    def _scalars(self, step: int, values: dict[str, float], prefix: str) -> None:
        import tensorflow as tf

        self._records.write(prefix, step, values)
        with self._writer.as_default(step=step):
            for name, value in values.items():
                tf.summary.scalar(f"{prefix}/{name}", value)
        self._writer.flush()

    def log_train(self, step: int, values: dict[str, float]) -> None:
        now = time.perf_counter()
        if self._last_step is not None and step > self._last_step:
            seconds_per_step = (now - self._last_time) / (step - self._last_step)
            values = values | {"img_per_s": self.batch_size / seconds_per_step}
            eta = f", ETA {(self.total_steps - step) * seconds_per_step / 60:.1f} min"
        else:
            eta = ""
        self._last_step, self._last_time = step, now
        if not self.enabled:
            return
        line = f"step {step}/{self.total_steps}: " + ", ".join(f"{k}={v:.4g}" for k, v in values.items()) + eta
        print(("\r\033[K" + line) if self.interactive else line, end="" if self.interactive else "\n", flush=True)
        self._scalars(step, values, "train")

    def log_eval(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        prefix = "\n" if self.interactive else ""
        print(f"{prefix}eval at step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in values.items()), flush=True)
        self._scalars(step, values, "eval")
        self._last_time = time.perf_counter()  # evaluation time is not training throughput

    def flush(self) -> None:
        """Makes the records so far durable (called with every checkpoint)."""
        if self._records is not None:
            self._records.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._records.close()
