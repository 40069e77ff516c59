"""The three published generators, as task specs. ``conf/task/<name>.yaml`` holds the same values for Hydra.

Paper names -> our fields:

Reddy 2023 (Gaussian items, 2 attention-only layers + MLP readout)
    N (context pairs) -> L = 8;  D = 63;  L (labels) -> n_labels = 32 with class k -> label k mod 32 ('modulo');
    K -> K (2^7 .. 2^11; 512 here);  epsilon -> noise_scale with noise = 'reddy';  B -> B;
    p_B (fraction of bursty sequences) -> p_bursty;  alpha -> alpha;  p_C (fresh classes) -> p_novel.
Chan et al. 2022 (Omniglot; Gaussian items stand in for the images)
    1600 training classes, each with its own label ('identity');  20 drawings a class -> exemplars = 20;
    3-shot 2-way bursts plus 2 fillers in a context of 8 -> burst_form = 'chan2022', shots = 3, ways = 2;
    p(bursty) = 0.9 -> p_bursty;  Zipf exponent -> alpha;  holdout classes for the few-shot probe -> n_holdout.
Chan, Chen, Gyorgy, Schuurmans 2024 (unit-norm prototypes + sigma N(0, I))
    5 high- + 5 low-frequency classes, p_high = 0.9 -> frequency = 'two_group', K = 10, n_high = 5;
    sigma -> noise_scale with noise = 'additive', prototype = 'unit';  p_relevant, L, L_relevant, N keep their names.
"""

from __future__ import annotations

from data_gen.spec import TaskSpec

PRESETS: dict[str, dict] = {
    "reddy2023": dict(
        L=8, D=63, n_labels=32, label_map="modulo", n_classes=512 + 64, n_holdout=64,
        prototype="gaussian", noise="reddy", noise_scale=0.1, burst_form="reddy", B=2, p_bursty=1.0, alpha=0.0,
    ),
    "chan2022": dict(
        L=8, D=64, n_labels=1600, label_map="identity", n_classes=1600 + 100, n_holdout=100,
        prototype="gaussian", noise="reddy", noise_scale=0.5, exemplars=20,
        burst_form="chan2022", shots=3, ways=2, p_bursty=0.9, alpha=0.0,
    ),
    "chan2024": dict(
        L=1, D=64, n_labels=10, label_map="identity", n_classes=20, n_holdout=10,
        prototype="unit", noise="additive", noise_scale=0.2, frequency="two_group", n_high=5, p_high=0.9,
        p_bursty=0.0, B=1, p_relevant=0.9, query_all_classes=True,
    ),
}  # fmt: skip


def preset(name: str, **overrides) -> TaskSpec:
    """The task spec of a published generator, with any field overridden."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return TaskSpec(**{**PRESETS[name], **overrides})
