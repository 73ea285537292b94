"""Each segment's config in the workdir, and the rule for resuming with a changed one.

`config.json` is written by a run's first segment and never overwritten. A resume whose config changes what
training computes is refused, naming the fields, unless `config.allow_config_change` is set; then the differences
are logged and the segment's config is kept beside the first as `config.step-<N>.json` (N: the step it resumed
from), which later resumes compare against. Fields that do not change what is computed (where and how often to log,
checkpoint and evaluate, when to stop, the machine's paths, the process layout: `config_diff.FREE_FIELDS`) may
change freely.
"""

from __future__ import annotations

import json
import logging
import re

import ml_collections
from etils import epath

from ghostnet_jax.storage import write_atomically
from ghostnet_jax.training import hosts
from ghostnet_jax.training.run_checkpoints import CheckpointMismatchError
from ghostnet_jax.training.config_diff import config_differences

FIRST = "config.json"
_SEGMENT = re.compile(r"config\.step-(\d+)\.json")


class ConfigChangedError(CheckpointMismatchError):
    """A resume with a config that changes what training computes, without `config.allow_config_change`."""


def latest_config(workdir: epath.Path) -> tuple[str, dict] | None:
    """(file name, contents) of the config the run's latest segment was written with, or None."""
    if not workdir.exists():
        return None
    segments = [(int(m.group(1)), p.name) for p in workdir.iterdir() if (m := _SEGMENT.fullmatch(p.name))]
    name = max(segments)[1] if segments else FIRST
    path = workdir / name
    return (name, json.loads(path.read_text())) if path.exists() else None


class RunConfigs:
    """The saved configs of the run in `workdir`, read once by every process before any of them writes."""

    def __init__(self, workdir: epath.Path, config: ml_collections.ConfigDict):
        self.workdir, self.config = workdir, config
        saved_name, saved = latest_config(workdir) or (FIRST, None)
        # One line per field that changes what training computes; empty when nothing does (or nothing was saved).
        self.differences = config_differences(saved, json.loads(config.to_json_best_effort()), saved_name)
        hosts.barrier("configs-read")  # process 0 writes only once every process has read

    def check_resume(self, checkpoints_exist: bool) -> None:
        """Raises `ConfigChangedError` if checkpoints will be resumed with a changed config that was not allowed."""
        if checkpoints_exist and self.differences and not self.config.allow_config_change:
            raise ConfigChangedError(
                f"the run in {self.workdir} was written with another config: "
                + "; ".join(self.differences)
                + ". Nothing was changed. Resume with the saved config, use a new --workdir, or pass "
                "--config.allow_config_change=True to continue with this one (both configs are kept)."
            )

    def record(self, start_step: int) -> None:
        """Process 0 keeps this segment's config: `config.json` for a run from scratch, `config.step-<N>.json`
        for a resume that changed it (logged)."""
        if not hosts.is_main():
            return
        text = self.config.to_json_best_effort(indent=2)
        if start_step == 0:
            write_atomically(self.workdir / FIRST, text)
        elif self.differences:
            name = f"config.step-{start_step}.json"
            logging.warning(
                "resuming at step %d with a changed config (kept as %s): %s",
                start_step,
                name,
                "; ".join(self.differences),
            )
            write_atomically(self.workdir / name, text)
