"""Storage paths: URLs (gs://) stay URLs through the path layer; metrics.jsonl holds no step twice after a resume."""

import contextlib
import json
from unittest import mock

from etils.epath import gpath

from ghostnet_jax.storage import storage_path
from ghostnet_jax.training.logger import MetricRecords


def test_urls_stay_urls_and_local_paths_become_absolute(tmp_path, monkeypatch):
    assert str(storage_path("gs://bucket/run") / "checkpoints") == "gs://bucket/run/checkpoints"
    monkeypatch.chdir(tmp_path)
    assert str(storage_path("runs/a")) == str(tmp_path / "runs" / "a")


@contextlib.contextmanager
def fake_bucket(root):
    """gs://bucket/... under `root` (a local stand-in for the bucket), reached the way production reaches it: epath's
    TensorFlow backend and TensorFlow's `tf.io.gfile` (only the path is translated). Yields the modes in which
    objects were opened: on GCS every write or append-mode open rewrites the whole object."""
    import tensorflow as tf

    opened = []

    def local(path):
        return str(path).replace("gs://bucket", str(root))

    def redirect(original):
        return lambda path, *args, **kwargs: original(local(path), *args, **kwargs)

    def redirect_two(original):
        return lambda path, target, *args, **kwargs: original(local(path), local(target), *args, **kwargs)

    def gfile_open(original):
        def open_(path, mode="r"):
            opened.append(mode)
            return original(local(path), mode)

        return open_

    names = ("exists", "isdir", "listdir", "makedirs", "mkdir", "remove", "rmtree", "stat", "glob")
    with contextlib.ExitStack() as stack:
        assert gpath._is_tf_installed()  # the backend production uses for gs:// when TensorFlow is installed
        for name in names:
            stack.enter_context(mock.patch.object(tf.io.gfile, name, redirect(getattr(tf.io.gfile, name))))
        stack.enter_context(mock.patch.object(tf.io.gfile, "rename", redirect_two(tf.io.gfile.rename)))
        stack.enter_context(mock.patch.object(tf.io.gfile, "GFile", gfile_open(tf.io.gfile.GFile)))
        yield opened


def log_steps(workdir, start_step, steps):
    records = MetricRecords(workdir, start_step)
    for step in steps:
        records.write("train", step, {"loss": float(step)})
    records.close()


def test_a_resumed_run_drops_the_interrupted_runs_later_records_on_a_gs_path(tmp_path):
    with fake_bucket(tmp_path):
        workdir = storage_path("gs://bucket/run")
        workdir.mkdir(parents=True)
        log_steps(workdir, 0, range(1, 7))  # interrupted after logging step 6; its last checkpoint was step 4
        log_steps(workdir, 4, range(5, 11))  # the resumed run redoes steps 5 and 6
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 11))


def test_on_a_gs_path_records_are_written_at_flushes_not_at_every_step(tmp_path):
    """Appending to a GCS object rewrites it: 1,000 appends of a growing log would move O(n^2) bytes."""
    with fake_bucket(tmp_path) as opened:
        workdir = storage_path("gs://bucket/run")
        workdir.mkdir(parents=True)
        records = MetricRecords(workdir, 0)
        for step in range(1, 1001):
            records.write("train", step, {"loss": 1.0})
            if step % 250 == 0:  # a checkpoint
                records.flush()
        records.close()
    assert [mode for mode in opened if mode[0] in "wa"] == ["w"] * 4  # one rewrite per checkpoint, no appends
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1000


def test_a_last_line_cut_short_is_dropped_with_a_warning_and_the_run_resumes(tmp_path, caplog):
    log_steps(tmp_path, 0, range(1, 5))
    with (tmp_path / "metrics.jsonl").open("a") as file:
        file.write('{"kind": "train", "step": 5, "lo')  # SIGKILL mid-write
    log_steps(tmp_path, 4, range(5, 7))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert "does not parse" in caplog.text
