"""A quick smoke test of the benchmark: both sides run, and the table's figures are the measured ones."""

import json
import re
import sys

from experiments import benchmark


def test_benchmark_runs_both_sides_and_tabulates_the_measured_ratios(tmp_path, monkeypatch):
    out = tmp_path / "bench"
    argv = ["benchmark", "--suites", "train,latency", "--models", "ghostnet_050", "--train-sizes", "32",
            "--infer-size", "32", "--batch", "2", "--repeats", "2", "--warmup", "0", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    benchmark.main()
    rows = {row["label"]: row for row in json.loads(out.with_suffix(".json").read_text())}
    assert set(rows) == {"train ghostnet_050 32px b2", "latency ghostnet_050 32px b1"}
    markdown = out.with_suffix(".md").read_text()
    for label, row in rows.items():
        ours, theirs = row["ours"], row["timm"]
        assert "error" not in ours and "error" not in theirs, row
        assert ours["min_s"] <= ours["median_s"] <= ours["max_s"] and ours["peak_bytes"] > 0
        if row["kind"] == "train":
            assert row["ours_value"][0] == 2 / ours["median_s"]  # img/s = batch / median step time
            ratio = row["ours_value"][0] / row["timm_value"][0]
        else:
            assert row["ours_value"][0] == 1000 * ours["median_s"]  # latency in ms
            ratio = row["timm_value"][0] / row["ours_value"][0]
        line = next(line for line in markdown.splitlines() if line.startswith(f"| {label} |"))
        assert re.search(rf"\| {ratio:.2f}x \|", line), line
