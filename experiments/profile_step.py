"""Where a train step's time goes: XLA ops of ghostnet_jax's benchmark train step, by total time.

    python -m experiments.profile_step [--model ghostnet_100] [--size 224] [--batch 32] [--impl auto|xla]
                                       [--steps 5] [--top 25]

Runs the same jitted step as `experiments/benchmark.py` (forward, backward, SGD update) under
`jax.profiler.trace` and reads the trace's per-op events. It prints the shares by category (reductions,
matrix products, convolutions, elementwise fusions), by the set of ops a fusion holds (which names the
pattern: e.g. [pad, slice] is a shifted copy), and the top instructions with their result shapes, so a gap
to timm can be traced to layer kinds.
"""

from __future__ import annotations

import argparse
import collections
import re
import tempfile
from pathlib import Path
from typing import NamedTuple

from experiments.benchmark import build_ours_train


def op_times(trace_dir: Path) -> collections.Counter:
    """Total picoseconds per XLA op name over all host threads of the trace."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    space.ParseFromString(next(trace_dir.rglob("*.xplane.pb")).read_bytes())
    totals: collections.Counter = collections.Counter()
    for plane in space.planes:
        names = {key: meta.name for key, meta in plane.event_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                totals[names[event.metadata_id]] += event.duration_ps
    return totals


class Instruction(NamedTuple):
    category: str  # 'reduce', 'dot', 'convolution', 'elementwise' for fusions; else the op kind
    summary: str  # op kind and result shape
    body: str  # a fusion's ops (without parameters, constants, bitcasts, broadcasts); else the op kind


def hlo_summaries(hlo_text: str) -> dict[str, Instruction]:
    """Instruction name -> its category, summary and (for a fusion) the ops it fuses.

    A fusion's category is 'reduction' if it reduces (BatchNorm statistics, weight gradients), else 'dot' or
    'convolution' if it holds one, else 'elementwise'; an unfused op's category is its kind.
    """
    bodies: dict[str, set[str]] = collections.defaultdict(set)
    instructions = []
    computation = None
    for line in hlo_text.splitlines():
        header = re.match(r"%?([\w.\-]+) \(.*\) -> .* \{$", line.strip())
        if header:
            computation = header.group(1)
            continue
        match = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ([\w\-]+)\((.*)", line)
        if match:
            name, shape, kind, rest = match.groups()
            bodies[computation].add(kind)
            calls = re.search(r"calls=%?([\w.\-]+)", rest)
            instructions.append((name, shape, kind, calls.group(1) if calls else None))
    summaries = {}
    for name, shape, kind, called in instructions:
        ops = bodies.get(called, set())
        category = kind
        if kind == "fusion":
            category = next((k for k in ("reduce", "dot", "convolution") if k in ops), "elementwise")
        body = ", ".join(sorted(ops - {"parameter", "constant", "bitcast", "broadcast"})) if called else kind
        summaries[name] = Instruction(category, f"{kind} {shape}", body)
    return summaries


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.profile_step", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="ghostnet_100")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--impl", default="auto", choices=["auto", "xla"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()

    import jax

    run, compiled = build_ours_train(args.model, args.size, args.batch, "float32", args.impl)
    run()  # compile and warm up outside the trace
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            for _ in range(args.steps):
                run()
        totals = op_times(Path(trace_dir))
    summaries = hlo_summaries(compiled().as_text())
    ops = {name: ps for name, ps in totals.items() if name in summaries}
    step_ps = sum(ops.values()) / args.steps
    print(f"{args.model} {args.size}px batch {args.batch}: {step_ps / 1e9:.1f} ms of XLA ops per step")
    by_kind: collections.Counter = collections.Counter()
    for name, ps in ops.items():
        by_kind[summaries[name].category] += ps
    print("by category: " + ", ".join(f"{k} {100 * v / sum(ops.values()):.0f}%" for k, v in by_kind.most_common()))
    by_body: collections.Counter = collections.Counter()
    for name, ps in ops.items():
        by_body[summaries[name].body] += ps
    print("| ops in the fusion | ms/step | share |\n|---|---|---|")
    for body, ps in by_body.most_common(args.top):
        print(f"| {body} | {ps / args.steps / 1e9:.1f} | {100 * ps / sum(ops.values()):.1f}% |")
    print("\n| op | ms/step | share | instruction |\n|---|---|---|---|")
    for name, ps in collections.Counter(ops).most_common(args.top):
        instruction = summaries[name]
        share = 100 * ps / sum(ops.values())
        print(f"| {name} | {ps / args.steps / 1e9:.2f} | {share:.1f}% | {instruction.summary} [{instruction.body}] |")


if __name__ == "__main__":
    main()
