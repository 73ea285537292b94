"""Metrics to stdout, TensorBoard and `metrics.jsonl` (process 0 only), with throughput and ETA.

`metrics.jsonl` holds one JSON object per logged step ({"kind": "train"|"eval", "step": ..., metrics}), the
machine-readable record that experiment reports are built from. A resumed run first drops the records of the steps
after its checkpoint (logged by the interrupted run, about to be redone), then appends: no step appears twice.
"""

from __future__ import annotations

import json
import sys
import time

from etils import epath


class MetricRecords:
    """`metrics.jsonl` in `workdir` (a path or URL), continued from `start_step`: later records are dropped first."""

    def __init__(self, workdir: epath.Path, start_step: int):
        path = workdir / "metrics.jsonl"
        if path.exists():
            lines = path.read_text().splitlines(keepends=True)
            kept = [line for line in lines if json.loads(line)["step"] <= start_step]
            if len(kept) < len(lines):  # rewritten atomically: a rename over the old file
                partial = workdir / "metrics.jsonl.tmp"
                partial.write_text("".join(kept))
                partial.replace(path)
        self._file = path.open("a")

    def write(self, kind: str, step: int, values: dict[str, float]) -> None:
        self._file.write(json.dumps({"kind": kind, "step": step, **values}) + "\n")
        self._file.flush()

    def close(self) -> None:
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

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._records.close()
