"""Several processes on one machine (loopback, gloo collectives, one CPU device each): a TPU pod's hosts in
miniature, running the real entry point. The reference is one process with two devices on the same global batches."""

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from configs import v1
from ghostnet_jax.training.config_diff import flatten
from ghostnet_jax.training.loop import PREEMPTED_EXIT_CODE, train_and_evaluate
from tests.test_train_loop import assert_trees_equal, final_train_state, tiny_config

ROOT = Path(__file__).resolve().parent.parent
STEPS = 16  # two epochs of the tiny config
EXIT_BOUND_S = 30  # a Cloud preemption notice gives about 30 s from SIGTERM to the kill


def run_config(data_dir, **changes):
    return tiny_config(data_dir, **{"max_steps": None, "checkpoint_every_steps": 4, "keep_checkpoints": 4} | changes)


def cli_flags(config) -> list[str]:
    """The --config.a.b=v overrides that turn configs/v1.py:fashion_mnist into `config`."""
    preset, wanted = flatten(v1.get_config("fashion_mnist").to_dict()), flatten(config.to_dict())
    return [f"--config.{key}={value}" for key, value in wanted.items() if preset[key] != value]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Processes:
    """`count` processes of `python -m ghostnet_jax.main` (one CPU device each when several), killed if the test
    fails or they outlive their timeout."""

    def __init__(self, config, workdir: Path, count: int):
        flags = ["--config", "configs/v1.py:fashion_mnist", "--workdir", str(workdir), *cli_flags(config)]
        devices = 2 // count
        session_flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
        env = os.environ | {"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} {session_flags}",
                            "JAX_PLATFORMS": "cpu"}
        if count > 1:
            port = free_port()
            flags += ["--config.multihost=True", f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                      f"--config.distributed.num_processes={count}"]
        self.logs = [workdir.parent / f"{workdir.name}.{k}.log" for k in range(count)]
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-m", "ghostnet_jax.main", *flags]
                + ([f"--config.distributed.process_id={k}"] if count > 1 else []),
                cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
            )
            for k, log in enumerate(self.logs)
        ]

    def output(self, k: int = 0) -> str:
        return self.logs[k].read_text()

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            assert all(p.poll() is None for p in self.procs), f"a process ended early:\n{self.output()[-3000:]}"
            assert time.monotonic() < deadline, f"no {text!r} within {timeout} s:\n{self.output()[-3000:]}"
            time.sleep(0.05)

    def wait(self, timeout: float) -> list[int]:
        try:
            return [p.wait(timeout=timeout) for p in self.procs]
        finally:
            self.kill()

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.fixture
def processes():
    started = []

    def start(*args):
        started.append(Processes(*args))
        return started[-1]

    yield start
    for group in started:
        group.kill()


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    """One process, two devices, straight through: checkpoints at steps 4, 8, 12 and 16."""
    workdir = tmp_path_factory.mktemp("reference")
    train_and_evaluate(run_config(data_dir), workdir)
    return workdir


def state_at(workdir: Path, step: int, copy: Path) -> Path:
    """A copy of the run in `workdir` as it was after `step` (later checkpoints removed)."""
    shutil.copytree(workdir, copy)
    for path in (copy / "checkpoints").iterdir():
        if path.name.isdigit() and int(path.name) > step:
            shutil.rmtree(path)
    return copy


def test_two_processes_equal_one_with_two_devices_and_their_checkpoint_resumes_in_one(
    reference, data_dir, tmp_path, processes
):
    workdir = tmp_path / "two"
    group = processes(run_config(data_dir, max_steps=4), workdir, 2)
    assert group.wait(timeout=600) == [0, 0], group.output(0)[-3000:] + group.output(1)[-3000:]
    assert re.search(r"^step 4/", group.output(0), re.M) and not re.search(r"^step ", group.output(1), re.M)
    step, state = final_train_state(workdir)
    assert step == 4
    assert_trees_equal(state, final_train_state(reference, 4)[1])  # bit for bit: same sums, same order

    train_and_evaluate(run_config(data_dir), workdir)  # 2 processes -> 1 process (2 devices)
    assert_trees_equal(final_train_state(workdir), final_train_state(reference))


def test_sigterm_stops_two_processes_at_one_step_after_resuming_a_one_process_checkpoint(
    reference, data_dir, tmp_path, processes
):
    workdir = state_at(reference, 4, tmp_path / "resumed")  # written by 1 process (2 devices), resumed by 2
    group = processes(run_config(data_dir), workdir, 2)
    group.wait_for("step 6/", timeout=600)
    signalled = time.monotonic()
    for p in group.procs:
        p.send_signal(signal.SIGTERM)
    codes = group.wait(timeout=EXIT_BOUND_S)
    exit_s = time.monotonic() - signalled
    assert codes == [PREEMPTED_EXIT_CODE] * 2, group.output(0)[-3000:]
    agreed = [re.findall(r"preempted at step (\d+)", group.output(k)) for k in range(2)]
    assert agreed[0] == agreed[1] and len(agreed[0]) == 1, agreed  # both processes stopped at the same step
    step = int(agreed[0][0])
    steps = {int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()}
    assert 6 <= step < STEPS and steps == {4, step} | {s for s in (8, 12) if s < step}, steps
    print(f"SIGTERM to exit of both processes: {exit_s:.1f} s; checkpoint at step {step}")

    train_and_evaluate(run_config(data_dir), workdir)  # and 2 processes -> 1 process again
    assert_trees_equal(final_train_state(workdir), final_train_state(reference))


def test_sigkill_at_a_random_moment_loses_nothing_but_time(reference, data_dir, tmp_path, processes):
    workdir = tmp_path / "killed"
    group = processes(run_config(data_dir, checkpoint_every_steps=1), workdir, 1)
    group.wait_for(f"step {random.randint(2, 8)}/", timeout=600)
    time.sleep(random.uniform(0, 1))
    group.procs[0].kill()
    group.wait(timeout=60)
    train_and_evaluate(run_config(data_dir, checkpoint_every_steps=1), workdir)
    assert not [p.name for p in (workdir / "checkpoints").iterdir() if p.name.startswith("corrupt-")]
    assert_trees_equal(final_train_state(workdir), final_train_state(reference))
