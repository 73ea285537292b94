"""Experiments run from the repository root with `python -m experiments.<module>`: the ablation suite for the
GhostNetV2/V3 papers' claims (`arms`, `claims`, `run`, `report`) and benchmarks."""
