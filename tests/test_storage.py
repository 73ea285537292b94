"""Storage paths: URLs (gs://) stay URLs through the path layer; metrics.jsonl holds no step twice after a resume."""

import contextlib
import json
from unittest import mock

from etils import epath
from etils.epath import gpath

from ghostnet_jax.storage import storage_path
from ghostnet_jax.training.logger import MetricRecords


def test_urls_stay_urls_and_local_paths_become_absolute(tmp_path, monkeypatch):
    assert str(storage_path("gs://bucket/run") / "checkpoints") == "gs://bucket/run/checkpoints"
    monkeypatch.chdir(tmp_path)
    assert str(storage_path("runs/a")) == str(tmp_path / "runs" / "a")


def fake_bucket(root):
    """epath's backends mocked so that gs://bucket/... lives under `root` (a local stand-in for the bucket)."""

    def local(path):
        return str(path).replace("gs://bucket", str(root))

    def redirect(original, path, *args, **kwargs):
        return original(local(path), *args, **kwargs)

    def redirect_two(original, path, target, *args, **kwargs):
        return original(local(path), local(target), *args, **kwargs)

    names = ("open", "exists", "isdir", "listdir", "makedirs", "mkdir", "remove", "rmtree", "stat", "glob")
    stack = contextlib.ExitStack()
    stack.enter_context(mock.patch.object(gpath, "_is_tf_installed", lambda: False))  # else gs:// goes to TF's GCS
    stack.enter_context(
        epath.testing.mock_epath(**{name: redirect for name in names}, rename=redirect_two, replace=redirect_two)
    )
    return stack


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
