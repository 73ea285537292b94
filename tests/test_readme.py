"""The README's two opening commands stay true: CI runs exactly the test command."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text())[:2]


def test_ci_runs_exactly_the_readme_test_command():
    run_command, test_command = readme_commands()
    assert "pytest" in test_command and "requirements-test.txt" in test_command
    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert test_command in ci_lines


def test_readme_run_command_uses_only_runtime_requirements():
    run_command, _ = readme_commands()
    assert "requirements.txt" in run_command and "python -m ghostnet_jax." in run_command
