"""The ablation suite: its arms, claims, run plans and verdict rule, the report on synthetic results, and the
driver, report and side-by-side end to end on mock data at the long budget (2 arms x 1 seed, 3 steps each,
an untrained ResNet teacher)."""

import json
import math
import os
import shlex
import shutil
import subprocess

import pytest
import tensorflow_datasets as tfds
from absl import flags
from ml_collections import config_flags

from experiments import budgets, report, run
from experiments.arms import ARMS, RECIPE, SEEDS, WIDTH_SERIES, augmentation, select
from experiments.claims import CLAIMS
from experiments.overrides import load_config
from experiments.records import CONFIG, METRICS, REPO, RUN_INFO, TEACHER, TEACHER_EVAL, eval_records, run_dir
from experiments.scales import LONG_ARMS, SCALES
from experiments.stats import AGREES, DISAGREES, INCONCLUSIVE, NOT_RUN, difference, overall
from ghostnet_jax.model_checkpoint import model_spec, save_model
from ghostnet_jax.models import create_model
from ghostnet_jax.summary import count_params
from ghostnet_jax.training.config_diff import config_differences
from ghostnet_jax.training.loop import eval_interval, step_counts
from ghostnet_jax.training.optim import learning_rate_schedule
from ghostnet_jax.training.preemption import PREEMPTED_EXIT_CODE

ARMS_UNDER_TEST = ("v1", "v2")  # V1 and V2 at width 0.5: cheap to compile, both distil, and one claim compares them
MODELS_UNDER_TEST = {"v1": ("ghostnet_050", {}), "v2": ("ghostnetv2_100", {"width": 0.5})}
FASHION_TRAIN = 60000  # Fashion-MNIST's training split
FASHION_TEST = 10000  # and its test split, the eval split
FASHION_STEPS_PER_EPOCH = FASHION_TRAIN // 128  # at the preset's batch size


def test_every_arm_sets_every_factor_and_every_claim_names_real_arms(tmp_path):
    factors = set(RECIPE) | set(augmentation(randaugment=True, erasing=True))
    for scale in SCALES:
        for planned in run.plan_runs(list(ARMS), [0], scale=scale, root=tmp_path, teacher="t", extra={}):
            assert factors <= set(planned.overrides), (scale, planned.arm)
    for arm in ARMS.values():
        if arm.overrides["model.name"].startswith("ghostnetv3"):
            assert {"model.num_conv_branches", "model.scale_branch", "model.identity_branch"} <= set(arm.overrides)
    assert [name for name, arm in ARMS.items() if not arm.distils] == ["kd_off"]
    named = {name for claim in CLAIMS for c in claim.comparisons for name in (c.better, c.worse)}
    assert named | {name for names in WIDTH_SERIES.values() for name in names} == set(ARMS)


def test_readme_lists_every_arm_with_its_command_and_every_claim():
    readme = (REPO / "experiments" / "README.md").read_text()
    for name, arm in ARMS.items():
        assert f"| {name} | {arm.group} |" in readme and f"`python -m experiments.run --arms {name}`" in readme, name
    for claim in CLAIMS:
        assert f"| {claim.statement} | {claim.paper} |" in readme, claim.key


def test_step_decay_ends_at_the_cosine_schedules_final_lr():
    runs = {
        r.arm: r
        for r in run.plan_runs(
            ["baseline", "step_decay"], [0], scale="fashion", root=REPO / "unused", teacher="unused", extra={}
        )
    }
    ends = {}
    for name in ("baseline", "step_decay"):
        config = runs[name].config()
        schedule = learning_rate_schedule(config.optim, FASHION_STEPS_PER_EPOCH, config.num_epochs)
        ends[name] = float(schedule(math.ceil(config.num_epochs * FASHION_STEPS_PER_EPOCH) - 1))
        after_warmup = round(config.optim.warmup_epochs * FASHION_STEPS_PER_EPOCH)  # the first step at the peak
        assert float(schedule(after_warmup)) == pytest.approx(config.optim.lr)
    # Both end near min_lr (1e-4 of a 0.2 peak): step decay on it, cosine one step before reaching it.
    assert ends["step_decay"] == pytest.approx(ends["baseline"], abs=1e-4 * config.optim.lr)
    assert ends["step_decay"] == pytest.approx(config.optim.min_lr)


def test_fashion_scale_trains_the_teacher_first_for_every_distilling_arm(tmp_path):
    runs = run.plan_runs(["kd_off", "v1"], [0, 1], scale="fashion", root=tmp_path, teacher=None, extra={})
    assert [(r.arm, r.seed) for r in runs] == [(TEACHER, 0), ("kd_off", 0), ("v1", 0), ("kd_off", 1), ("v1", 1)]
    teacher = runs[0]
    assert teacher.config_file == "configs/v1.py" and teacher.workdir == tmp_path / TEACHER
    budget = SCALES["fashion"]
    assert teacher.config().num_epochs == budget.teacher_budget["num_epochs"] == 3.0
    assert runs[1].config().num_epochs == budget.shared["num_epochs"] == 0.5
    assert [r.overrides.get("distill.teacher") for r in runs[1:]] == [None, str(tmp_path / TEACHER / "checkpoints")] * 2
    assert run.plan_runs(["kd_off"], [0], scale="fashion", root=tmp_path, teacher=None, extra={})[0].arm == "kd_off"


def test_long_budget_is_six_times_the_short_one_evaluated_8_times_with_its_arms_and_a_given_teacher(tmp_path, capsys):
    long, short = SCALES["fashion_long"], SCALES["fashion"]
    assert long.root != short.root and long.results != short.results
    with pytest.raises(ValueError, match="pass --teacher"):
        run.plan_runs(list(LONG_ARMS), SEEDS, scale="fashion_long", root=tmp_path, teacher=None, extra={})
    runs = run.plan_runs(list(LONG_ARMS), SEEDS, scale="fashion_long", root=tmp_path, teacher="/t", extra={})
    assert [(r.arm, r.seed) for r in runs] == [(arm, seed) for seed in SEEDS for arm in LONG_ARMS]
    preset = load_config("configs/v3.py", "fashion_mnist")
    for planned in runs:
        config = planned.config()
        # 3 epochs: the offline student preset's length when the suite was set (4.5 since, for the quickstart's margin)
        assert config.num_epochs == 6 * short.shared["num_epochs"] == 3.0
        assert config.data.image_size == preset.data.image_size
        steps_per_epoch, end = step_counts(config, FASHION_TRAIN)
        every = eval_interval(config, steps_per_epoch)
        assert len(set(range(every, end + 1, every)) | {end}) >= 8, planned.arm  # the loop's evaluation steps
        assert config.distill.teacher == "/t" or not ARMS[planned.arm].distils
    assert select([], [], LONG_ARMS) == list(LONG_ARMS) and select([], ["reparam"], LONG_ARMS) == ["v3_n1"]
    run.main(["--scale", "fashion_long", "--teacher", "/t", "--dry-run"])  # the one flag: its arms, its directory
    workdirs = [line.split("--workdir ")[1].split()[0] for line in capsys.readouterr().out.splitlines()]
    assert workdirs == [str(run_dir(REPO / long.root, r.arm, r.seed)) for r in runs]


def test_a_missing_teacher_is_refused_before_anything_trains(tmp_path):
    args = ["--scale", "fashion_long", "--arms", "baseline", "--seeds", "0", "--root", str(tmp_path / "runs")]
    with pytest.raises(ValueError, match="is not a directory: pass a checkpoint directory"):
        run.main(args + ["--teacher", str(tmp_path / "missing")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no complete checkpoint"):
        run.main(args + ["--teacher", str(tmp_path / "empty")])
    assert not (tmp_path / "runs").exists()


def test_imagenet_scale_builds_full_recipe_commands_with_the_given_teacher(tmp_path):
    runs = run.plan_runs(
        ["baseline", "kd_off"],
        [0, 1],
        scale="imagenet",
        root=tmp_path,
        teacher="/ckpt/teacher",
        extra={"data.data_dir": "/data"},
    )
    assert [(r.arm, r.seed) for r in runs] == [("baseline", 0), ("kd_off", 0), ("baseline", 1), ("kd_off", 1)]
    baseline = runs[0].command()
    assert baseline.startswith("python -m ghostnet_jax.main --config configs/v3.py --workdir ")
    assert "--config.distill.teacher=/ckpt/teacher" in baseline and "--config.data.data_dir=/data" in baseline
    assert "distill.teacher" not in runs[1].overrides and runs[1].config().num_epochs == 600
    with pytest.raises(ValueError, match="pass --teacher"):
        run.plan_runs(["baseline"], [0], scale="imagenet", root=tmp_path, teacher=None, extra={})
    with pytest.raises(ValueError, match="'distill.alpha' is set by arm 'baseline'"):
        run.plan_runs(["baseline"], [0], scale="imagenet", root=tmp_path, teacher="t", extra={"distill.alpha": 0.0})


def test_each_runs_equivalent_command_builds_the_same_config(monkeypatch):
    monkeypatch.chdir(REPO)
    for planned in run.plan_runs(
        ["v2", "step_decay", "aug_none"],
        [1],
        scale="fashion",
        root=REPO / "unused",
        teacher=None,
        extra={"data.crop_scale": (0.6, 1.0)},
    ):
        argv = shlex.split(planned.command())[2:]  # drop 'python -m': the module is argv[0]
        flag_values = flags.FlagValues()
        config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, sys_argv=argv)
        flags.DEFINE_string("workdir", None, "", flag_values=flag_values)
        flag_values(argv)
        assert flag_values.config.to_dict() == planned.config().to_dict(), planned.arm
        assert flag_values.workdir == str(planned.workdir)


def test_verdict_rule():
    same_seeds = {0: 0.80, 1: 0.81, 2: 0.82}
    assert difference({s: v + 0.05 for s, v in same_seeds.items()}, same_seeds, paired=False).verdict == AGREES
    assert difference(same_seeds, {s: v + 0.05 for s, v in same_seeds.items()}, paired=False).verdict == DISAGREES
    assert difference({s: v + 0.005 for s, v in same_seeds.items()}, same_seeds, paired=False).verdict == INCONCLUSIVE
    paired = difference({s: v + 0.005 for s, v in same_seeds.items()}, same_seeds, paired=True)
    assert paired.verdict == AGREES and paired.diff == pytest.approx(0.005)
    assert paired.se == pytest.approx(0.0, abs=1e-12)
    assert difference({0: 0.9}, {0: 0.1}, paired=False).verdict == INCONCLUSIVE  # one seed: no spread
    assert difference({}, same_seeds, paired=False).verdict == NOT_RUN
    assert overall([AGREES, AGREES]) == AGREES and overall([AGREES, INCONCLUSIVE]) == INCONCLUSIVE
    assert overall([AGREES, DISAGREES]) == "mixed" and overall([NOT_RUN, DISAGREES]) == DISAGREES


def synthetic_arm(name, ema_top1, top1=None, started=None, killed_attempt=False):
    """An arm's finished runs with the given final accuracies (one per seed), without training anything.

    `killed_attempt`: each run also had an attempt killed before it recorded its end (no wall time)."""
    top1 = top1 or ema_top1
    (planned,) = run.plan_runs([name], [0], scale="fashion", root=REPO / "unused", teacher="unused", extra={})
    overrides = planned.overrides  # what the driver records: derived values resolved
    attempts = [{"commit": "0123456789abcdef", "dirty": False, "wall_seconds": 90.0}]
    attempts += [{"commit": "0123456789abcdef", "dirty": False, "completed": False}] if killed_attempt else []
    info = {
        "scale": "fashion",
        "overrides": overrides,
        "command": "python -m ghostnet_jax.main ...",
        "attempts": attempts,
    }
    runs = [
        report.RunResult(
            seed, {"step": 100, "ema_top1": e, "top1": t}, [(50, e / 2), (100, e)], info, {"data": {"image_size": 40}}
        )
        for seed, (e, t) in enumerate(zip(ema_top1, top1))
    ]
    costs = {
        "model": ARMS[name].overrides["model.name"],
        "overrides": {},
        "image_size": 40,
        "params": 1000,
        "macs": 2_000_000,
    }
    return report.ArmResult(name, started or len(runs), overrides, runs, costs)


def test_report_states_each_verdict_with_its_numbers(tmp_path):
    arms = {
        arm.name: arm
        for arm in [
            synthetic_arm("baseline", [0.80, 0.81, 0.82], top1=[0.78, 0.79, 0.80]),
            synthetic_arm("kd_off", [0.70, 0.71, 0.72]),
            synthetic_arm("step_decay", [0.90, 0.91, 0.92]),
            synthetic_arm("v3_n1", [0.805, 0.815], started=3, killed_attempt=True),
        ]
    }
    text = report.markdown(tmp_path, tmp_path, arms, report.judge_claims(arms), teacher=None)
    assert "| baseline | baseline | " in text and "| 3 | 81.00 ± 1.00 | 79.00 ± 1.00 | 1.5 | 0123456789 |" in text
    assert "| 2 of 3 | 81.00 ± 0.71 | 81.00 ± 0.71 | ≥1.5 |" in text  # a killed attempt's time is unknown
    assert "| v3_n1 | 1 | 100 | 81.50 | 81.50 | ≥1.5 | 0123456789 |" in text
    assert "**knowledge distillation helps** (GhostNetV3): **agrees**" in text
    assert "- `baseline − kd_off`: +10.00 pp (SE 0.82, needs > 2 SE; unpaired; n = 3 vs 3) → **agrees**" in text
    assert "**cosine learning-rate decay beats step decay** (GhostNetV3): **disagrees**" in text
    assert "- `baseline: ema_top1 − top1`: +2.00 pp (SE 0.00, needs > 2 SE; paired over seeds; n = 3 vs 3)" in text
    assert "- `baseline − v3_n1`: +0.00 pp (SE 0.76, needs > 2 SE; unpaired; n = 3 vs 2), fewer than 3 seeds →" in text
    assert "**N=3 parallel branches is best** (GhostNetV3): **inconclusive**" in text
    # (0.5 epochs - 0.1 warmup) / 10 levels; (1e-4 / 0.2) ** (1 / 9)
    assert "| step_decay | optim.schedule='step'; optim.decay_epochs=0.04; optim.decay_rate=0.4297" in text
    report.write_figures(arms, tmp_path)
    assert (tmp_path / "curves.png").stat().st_size > 5000 and (tmp_path / "acc_vs_macs.png").stat().st_size > 5000


def test_report_states_the_teachers_accuracy_and_whether_it_beats_every_student_run(tmp_path):
    arms = {
        arm.name: arm
        for arm in [
            synthetic_arm("baseline", [0.80, 0.81, 0.82], top1=[0.78, 0.79, 0.83]),
            synthetic_arm("kd_off", [0.70, 0.71, 0.72]),
        ]
    }
    given = {
        "checkpoint": "/ckpt/resnet18",
        "model": "resnet18",
        "top1": 0.9,
        "examples": 10000,
        "commit": "abcdef0123456789",
        "data": {"name": "fashion_mnist_debian", "eval_split": "test", "image_size": 40},
    }
    trained = {
        "command": "python -m ghostnet_jax.main --config configs/v1.py",
        "final": {"ema_top1": 0.95, "top1": 0.5},
    }
    assert report.describe_teacher(trained, None) == (
        "Distillation teacher: `python -m ghostnet_jax.main --config configs/v1.py`, EMA top-1 95.00.",
        0.95,
    )
    assert report.describe_teacher(trained, given)[1] == 0.9 and report.describe_teacher(None, None) is None
    strong = report.markdown(tmp_path, tmp_path, arms, report.judge_claims(arms), report.describe_teacher(None, given))
    assert (
        "Distillation teacher: `/ckpt/resnet18` (resnet18), top-1 90.00 on the 10,000 images of fashion_mnist_debian "
        "`test` at 40 px (evaluated by the driver at commit abcdef0123). It beats every student run; the best, "
        "baseline seed 2, reached raw top-1 83.00."
    ) in strong
    weak = report.describe_teacher(None, given | {"top1": 0.825})
    assert (
        "It does **not** beat every student run: baseline seed 2 reached raw top-1 83.00, so the distillation arms "
        "do not learn from a stronger teacher."
    ) in report.markdown(tmp_path, tmp_path, arms, [], weak)
    assert report.teacher_strength(0.83, report.arm_metrics(arms))[0] is False  # a tie is not stronger
    assert report.teacher_strength(0.9, {}) == (None, "No student run has finished to compare it with.")


def test_committed_side_by_side_is_the_one_the_committed_results_give(tmp_path):
    # Regenerated from each budget's committed results.json: the file holds no hand edits and no stale verdicts,
    # and re-judging a budget's runs gives the verdicts its own report recorded (the rule is the same).
    committed = (REPO / budgets.OUT / "results.md").read_text()
    assert budgets.write_side_by_side({s: REPO / SCALES[s].results for s in budgets.BUDGETS}, tmp_path) == committed
    assert (tmp_path / "differences.png").read_bytes().startswith(b"\x89PNG")
    paths = [REPO / SCALES[scale].results / "results.json" for scale in budgets.BUDGETS]
    recorded = [json.loads(path.read_text()) for path in paths if path.exists()]
    assert recorded  # the half-epoch budget's at least
    for results in recorded:
        verdicts = {claim.key: verdict for claim, verdict, _ in report.judge(budgets.run_metrics(results))}
        assert {claim["key"]: claim["verdict"] for claim in results["claims"]}.items() <= verdicts.items()


def test_committed_long_budget_has_every_arm_at_3_seeds_from_recorded_runs_and_a_stronger_teacher():
    # What the README reads at the long budget rests on these records: every arm finished 3 seeds at the budget's
    # length with 8 evaluations, each run's config is the one the driver plans today for its arm and seed, each
    # attempt names its commit, and the teacher beats every student run (recomputed, not the stored flag).
    results = json.loads((REPO / SCALES["fashion_long"].results / "results.json").read_text())
    assert sorted(results["arms"]) == sorted(LONG_ARMS)
    teacher = results["teacher_eval"]["checkpoint"]
    planned = {
        (r.arm, r.seed): r.config()
        for r in run.plan_runs(
            list(LONG_ARMS),
            SEEDS,
            scale="fashion_long",
            root=REPO / SCALES["fashion_long"].root,
            teacher=teacher,
            extra={},
        )
    }
    recorded = {(arm, r["seed"]): r for arm, record in results["arms"].items() for r in record["runs"]}
    assert recorded.keys() == planned.keys()  # 3 seeds of every arm, nothing else
    for key, record in recorded.items():
        assert config_differences(record["config"], planned[key].to_dict()) == [], key
        _, end = step_counts(planned[key], FASHION_TRAIN)
        assert record["final"]["step"] == end and len(record["curve"]) >= 8, key
        assert record["attempts"] and all(len(a["commit"]) == 40 for a in record["attempts"]), key
    beats, _ = report.teacher_strength(results["teacher_eval"]["top1"], budgets.run_metrics(results))
    assert beats is True and results["teacher_eval"]["examples"] == FASHION_TEST


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """Runs the long budget's driver twice (the second finds everything finished), the report and the side by
    side with the committed half-epoch results, on mock Fashion-MNIST.

    The budget's 3 epochs of 8 images are 3 steps per arm; compiling a train step takes minutes on a 2-core CPU,
    so the teacher is a saved untrained ResNet-18 (`--teacher`, as the long budget requires) rather than a third
    training run; test_fashion_scale_trains_the_teacher_first checks the plan that trains one."""
    root, out, side = (tmp_path_factory.mktemp(name) for name in ("runs", "results", "budgets"))
    teacher = tmp_path_factory.mktemp("teacher") / "checkpoints"
    model = create_model("resnet18", num_classes=10, in_chans=1)
    save_model(teacher, model, model_spec("resnet18", num_classes=10, overrides={"in_chans": 1}, fused=False))
    args = [
        "--scale",
        "fashion_long",
        "--arms",
        ",".join(ARMS_UNDER_TEST),
        "--seeds",
        "0",
        "--root",
        str(root),
        "--teacher",
        str(teacher),
        f"data.data_dir={tmp_path_factory.mktemp('tfds')}",
        "data.num_train=8",
        "data.num_eval=16",
        "data.image_size=36",
        "batch_size=8",
        "log_every_steps=1",
    ]
    records = (METRICS, RUN_INFO, TEACHER_EVAL)
    with tfds.testing.mock_data(num_examples=16):
        run.main(args)
        first = {path: path.read_bytes() for path in root.rglob("*") if path.name in records}
        run.main(args)
        second = {path: path.read_bytes() for path in root.rglob("*") if path.name in records}
    report.main(["--root", str(root), "--out", str(out)])
    budgets.main(["--results", f"fashion_long={out}", "--out", str(side)])
    return root, out, teacher, first, second, side


@pytest.mark.slow
def test_rerunning_the_driver_skips_finished_runs(suite):
    root, _, _, first, second, _ = suite
    assert first == second
    assert sorted(str(path.relative_to(root)) for path in first) == sorted(
        [f"{name}/seed0/{file}" for name in ARMS_UNDER_TEST for file in (METRICS, RUN_INFO)] + [TEACHER_EVAL]
    )


def test_a_run_directory_of_another_config_is_refused_naming_the_field_but_another_cache_directory_is_not(
    suite, tmp_path
):
    # A finished run, copied: the same config is skipped whatever this machine's compilation cache directory
    # (not what the run computes), and a changed training field is refused, by name, before anything trains.
    root = suite[0]
    workdir = tmp_path / "v1"
    shutil.copytree(root / "v1" / "seed0", workdir)
    info = json.loads((workdir / RUN_INFO).read_text())
    finished = run.Run(info["arm"], info["seed"], info["config_file"], info["preset"], info["overrides"], workdir)
    config = json.loads((workdir / CONFIG).read_text())
    (workdir / CONFIG).write_text(json.dumps({**config, "compilation_cache_dir": "/elsewhere"}))
    with tfds.testing.mock_data(num_examples=16):
        assert run.execute(finished, "fashion_long") is False
    (workdir / CONFIG).write_text(json.dumps({**config, "optim": {**config["optim"], "lr": 9.0}}))
    with pytest.raises(ValueError, match=r"holds a run of another config \(optim.lr: 9.0 in config.json"):
        run.execute(finished, "fashion_long")


def test_runs_record_their_commit_command_and_teacher(suite):
    root, _, teacher, *_ = suite
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    for name in ARMS_UNDER_TEST:
        info = json.loads((run_dir(root, name, 0) / RUN_INFO).read_text())
        (attempt,) = info["attempts"]
        assert attempt["commit"] == head and attempt["completed"] and attempt["wall_seconds"] > 0
        assert info["final_step"] == 3 and info["overrides"]["model.name"] == ARMS[name].overrides["model.name"]
        assert info["scale"] == "fashion_long" and [r["step"] for r in eval_records(run_dir(root, name, 0))] == [
            1,
            2,
            3,
        ]
        config = json.loads((run_dir(root, name, 0) / "config.json").read_text())
        assert config["distill"]["teacher"] == str(teacher) and config["data"]["randaugment"] == ""  # the scale's
        assert config["num_epochs"] == SCALES["fashion_long"].shared["num_epochs"]
        assert f"--config.distill.teacher={teacher}" in info["command"] and "--config.seed=0" in info["command"]


def test_report_table_holds_the_runs_final_metrics_and_costs(suite):
    root, out, *_ = suite
    results = json.loads((out / "results.json").read_text())
    table = (out / "results.md").read_text()
    assert set(results["arms"]) == set(ARMS_UNDER_TEST) and results["teacher"] is None
    finals = {name: eval_records(run_dir(root, name, 0))[-1] for name in ARMS_UNDER_TEST}
    given = json.loads((root / TEACHER_EVAL).read_text())
    assert results["teacher_eval"] == given and results["teacher_top1"] == given["top1"]
    assert given["model"] == "resnet18" and given["examples"] == 16 and given["data"]["eval_split"] == "test"
    best_student = max(final[metric] for final in finals.values() for metric in ("ema_top1", "top1"))
    assert results["teacher_beats_students"] == (given["top1"] > best_student)
    assert f"(resnet18), top-1 {100 * given['top1']:.2f} on the 16 images of fashion_mnist_debian `test`" in table
    for name in ARMS_UNDER_TEST:
        final = finals[name]
        arm = results["arms"][name]
        assert arm["ema_top1"] == {"mean": final["ema_top1"], "std": None, "n": 1}
        assert arm["top1"] == {"mean": final["top1"], "std": None, "n": 1}
        assert arm["runs"][0]["final"] == {k: v for k, v in final.items() if k != "kind"}
        model, overrides = MODELS_UNDER_TEST[name]
        assert arm["costs"]["params"] == count_params(create_model(model, num_classes=10, in_chans=1, **overrides))
        (row,) = [line for line in table.splitlines() if line.startswith(f"| {name} | {ARMS[name].group} |")]
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[3] == model + "".join(f" {k}={v}" for k, v in overrides.items())
        assert cells[4] == f"{arm['costs']['params']:,}"
        assert cells[6:9] == ["1", f"{100 * final['ema_top1']:.2f}", f"{100 * final['top1']:.2f}"]
    verdicts = {claim["key"]: claim for claim in results["claims"]}
    assert set(verdicts) == {claim.key for claim in CLAIMS}
    assert verdicts["ema"]["verdict"] == NOT_RUN
    # V2 - V1 is computed, but one seed has no spread: inconclusive, with the difference in the line.
    dfc = verdicts["dfc"]
    assert dfc["verdict"] == INCONCLUSIVE and [c["verdict"] for c in dfc["comparisons"]] == [INCONCLUSIVE, NOT_RUN]
    v2_v1 = results["arms"]["v2"]["ema_top1"]["mean"] - results["arms"]["v1"]["ema_top1"]["mean"]
    assert dfc["comparisons"][0]["diff"] == v2_v1
    assert f"- `v2 − v1`: {100 * v2_v1:+.2f} pp (no spread with fewer than 2 seeds" in table
    for claim in CLAIMS:
        assert f"**{claim.statement}** ({claim.paper}): **{verdicts[claim.key]['verdict']}**" in table


def test_side_by_side_reads_the_long_budgets_runs_next_to_the_committed_half_epoch(suite):
    _, out, *_, side = suite
    long = json.loads((out / "results.json").read_text())
    (dfc,) = [claim for claim in long["claims"] if claim["key"] == "dfc"]
    v2_v1 = dfc["comparisons"][0]
    text = (side / "results.md").read_text()
    committed = (REPO / budgets.OUT / "results.md").read_text().splitlines()
    (half_epoch,) = [line.split(" | ")[1] for line in committed if line.startswith("| `v2 − v1` |")]
    assert (
        f"| `v2 − v1` | {half_epoch} | {100 * v2_v1['diff']:+.2f} pp (no spread; n = 1 vs 1) → inconclusive |" in text
    )
    assert "## `fashion_long`: 3 epochs at 36 px" in text and "2 finished runs of 2 arms (seeds per arm: 1)" in text
    assert (side / "differences.png").stat().st_size > 5000


def test_report_writes_both_figures(suite):
    _, out, *_ = suite
    for name in ("curves.png", "acc_vs_macs.png"):
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000


def test_shards_split_the_plan_disjointly(tmp_path, capsys):
    planned = run.plan_runs(["v1", "v2", "kd_off"], [0, 1], scale="fashion", root=tmp_path, teacher=None, extra={})
    shards = [run.shard(planned, k, 2) for k in range(2)]
    assert [(r.arm, r.seed) for r in shards[0]] == [(TEACHER, 0), ("v1", 0), ("kd_off", 0), ("v2", 1)]
    assert [(r.arm, r.seed) for r in shards[1]] == [("v2", 0), ("v1", 1), ("kd_off", 1)]
    assert run.shard(planned, 0, 1) == planned
    with pytest.raises(ValueError, match="shard 2/2"):
        run.shard(planned, 2, 2)
    with pytest.raises(SystemExit):
        run.main(["--shard", "2/2", "--dry-run"])
    assert "expected K/N with 0 <= K < N" in capsys.readouterr().err
    run.main(["--arms", "kd_off,v1,v2", "--seeds", "0,1", "--root", str(tmp_path), "--shard", "1/2", "--dry-run"])
    printed = capsys.readouterr().out.splitlines()
    assert [line.split("--workdir ")[1].split()[0] for line in printed] == [str(r.workdir) for r in shards[1]]


def test_a_shard_other_than_0_waits_for_the_teacher(tmp_path, monkeypatch, capsys):
    teacher = run.Run.resolve(TEACHER, 0, "configs/v1.py", "fashion_mnist", {}, tmp_path / TEACHER)
    monkeypatch.setattr(run, "_end_step", lambda r: 7)
    polls = []

    def teacher_finishes_while_waiting(seconds):  # stands in for time.sleep while shard 0 trains
        polls.append(seconds)
        teacher.workdir.mkdir(parents=True, exist_ok=True)
        (teacher.workdir / METRICS).write_text(json.dumps({"kind": "eval", "step": 7, "ema_top1": 0.5}) + "\n")

    monkeypatch.setattr(run.time, "sleep", teacher_finishes_while_waiting)
    run.wait_until_finished(teacher)
    assert polls == [run.TEACHER_POLL_SECONDS]
    assert capsys.readouterr().out.count("waiting for teacher (trained by shard 0)") == 1


def test_sigterm_stops_the_suite_while_a_failed_arm_lets_the_others_run(tmp_path, monkeypatch):
    """A preempted run has written its checkpoint: the driver must stop (exit 42, as training does) instead of
    starting the next arm in a process that was told to go; an ordinary failure is reported after the rest."""
    started = []

    def execute(planned, scale):
        started.append(planned.arm)
        if planned.arm == "v1":
            raise outcome
        return 1

    monkeypatch.setattr(run, "execute", execute)
    args = ["--arms", "v1,v2", "--seeds", "0", "--root", str(tmp_path), "--teacher", "unused"]
    monkeypatch.setattr(run, "check_teacher_directory", lambda path: None)
    monkeypatch.setattr(run, "record_teacher_accuracy", lambda config, root: None)
    outcome = run.Preempted("preempted at step 3")

    def exit_now(code):  # os._exit, as the entry point exits, but catchable here
        raise SystemExit(code)

    monkeypatch.setattr(os, "_exit", exit_now)
    with pytest.raises(SystemExit) as exit_info:
        run.main(args)
    assert exit_info.value.code == PREEMPTED_EXIT_CODE == 42 and started == ["v1"]
    started.clear()
    outcome = RuntimeError("diverged")
    with pytest.raises(RuntimeError, match="1 run\\(s\\) failed:\nv1 seed 0: RuntimeError\\('diverged'\\)"):
        run.main(args)
    assert started == ["v1", "v2"]
