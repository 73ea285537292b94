"""The documents stay true: CI runs exactly the README's test command, the results they quote are the generated
ones, and their links lead somewhere."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The documents that quote generated results: the user's guide, the experiments' results and the performance page.
DOCUMENTS = [ROOT / "README.md", ROOT / "experiments" / "README.md", ROOT / "experiments" / "PERFORMANCE.md"]


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


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_documents_quote_result_tables_verbatim(document):
    # A document's table whose header is a committed results table's header must be one of those tables,
    # row for row: the figures are the generated ones, never retyped or left stale.
    # Several results files share a header (every budget's arms table): the table must be one of them.
    generated = [
        t for path in (ROOT / "experiments" / "results").rglob("*.md") for t in markdown_tables(path.read_text())
    ]
    quoted = 0
    for table in markdown_tables(document.read_text()):
        candidates = [candidate for candidate in generated if candidate[0] == table[0]]
        if candidates:
            assert table in candidates, f"{document.name}'s table under {table[0]!r} differs from every generated one"
            quoted += 1
    assert quoted >= 1


def test_readme_quotes_the_claims_at_both_budgets():
    # The side-by-side verdicts are in the README as generated (test_readme_quotes_result_tables_verbatim then
    # holds them to the file, row for row), so they cannot be dropped or left from an older run.
    generated = markdown_tables((ROOT / "experiments" / "results" / "fashion_mnist_budgets" / "results.md").read_text())
    (claims,) = [table for table in generated if table[0].startswith("| claim |")]
    assert claims in markdown_tables((ROOT / "README.md").read_text())


VERDICT_LINE = re.compile(r"^(\*\*.+\*\* \(.+\): \*\*[a-z]+\*\*|- `.+ − .+`: .+ → \*\*[a-z]+\*\*)$")


def test_documents_quote_claim_verdicts_verbatim():
    # Every claim's verdict line and comparison line in the documents is a line of a committed results file:
    # the numbers and verdicts they read out are the generated ones.
    results = (ROOT / "experiments" / "results").rglob("*.md")
    generated = {line for path in results for line in path.read_text().splitlines()}
    quoted = [line for doc in DOCUMENTS for line in doc.read_text().splitlines() if VERDICT_LINE.match(line)]
    assert quoted, "no document quotes the claim verdicts"
    assert [line for line in quoted if line not in generated] == []


def test_the_readme_is_a_guide_of_at_most_400_lines():
    # Measurements, their methods and history live beside the experiments (experiments/README.md, PERFORMANCE.md).
    assert len((ROOT / "README.md").read_text().splitlines()) <= 400


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors for a markdown file's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", text, flags=re.S), re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize(
    "document", DOCUMENTS + [ROOT / "CONTRIBUTING.md"], ids=lambda path: str(path.relative_to(ROOT))
)
def test_document_links_lead_to_files_and_headings_that_exist(document):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", document.read_text()):
        if "://" in target:
            continue
        path, _, anchor = target.partition("#")
        linked = (document.parent / path).resolve() if path else document
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked.read_text()):
            broken.append(target)
    assert broken == []
