"""The README stays true: CI runs exactly its test command, and the results it quotes are the generated ones."""

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


def markdown_tables(text: str) -> list[list[str]]:
    """Every run of consecutive lines that start with '|'."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables, current = tables + [current], []
    return tables


def test_readme_quotes_result_tables_verbatim():
    # A README table whose header is a committed results table's header must be one of those tables,
    # row for row: the README's figures are the generated ones, never retyped or left stale.
    # Several results files share a header (every budget's arms table): the table must be one of them.
    generated = [
        t for path in (ROOT / "experiments" / "results").rglob("*.md") for t in markdown_tables(path.read_text())
    ]
    quoted = 0
    for table in markdown_tables((ROOT / "README.md").read_text()):
        candidates = [candidate for candidate in generated if candidate[0] == table[0]]
        if candidates:
            assert table in candidates, f"the README's table under {table[0]!r} differs from every generated one"
            quoted += 1
    assert quoted >= 1


def test_readme_quotes_the_claims_at_both_budgets():
    # The side-by-side verdicts are in the README as generated (test_readme_quotes_result_tables_verbatim then
    # holds them to the file, row for row), so they cannot be dropped or left from an older run.
    generated = markdown_tables((ROOT / "experiments" / "results" / "fashion_mnist_budgets" / "results.md").read_text())
    (claims,) = [table for table in generated if table[0].startswith("| claim |")]
    assert claims in markdown_tables((ROOT / "README.md").read_text())


VERDICT_LINE = re.compile(r"^(\*\*.+\*\* \(.+\): \*\*[a-z]+\*\*|- `.+ − .+`: .+ → \*\*[a-z]+\*\*)$")


def test_readme_quotes_claim_verdicts_verbatim():
    # Every claim's verdict line and comparison line in the README is a line of a committed results file:
    # the numbers and verdicts the README reads out are the generated ones.
    results = (ROOT / "experiments" / "results").rglob("*.md")
    generated = {line for path in results for line in path.read_text().splitlines()}
    quoted = [line for line in (ROOT / "README.md").read_text().splitlines() if VERDICT_LINE.match(line)]
    assert quoted, "the README quotes no claim verdicts"
    assert [line for line in quoted if line not in generated] == []
