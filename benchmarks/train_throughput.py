"""Training throughput: the library's fused ensemble chunk against a straightforward baseline.

For each setting and ensemble size M it prints steps/s (of the whole ensemble), member-steps/s, sequences/s,
compile time, and model FLOP/s, with the ratio to a large fp32 matmul timed in the same run (this machine's
practical peak). The baseline is what a one-off script does: batches generated with NumPy on the host and a
jitted train step called once per batch (one member). The timed calls of the ensemble sizes alternate, so a
drift in the host's speed does not bias the ratio of M = 8 to M = 1.

    python benchmarks/train_throughput.py                      # both settings, M = 1, 8, 32
    python benchmarks/train_throughput.py --settings reddy2023 --members 1 --repeats 5
    python benchmarks/train_throughput.py --cpu-devices 1      # the whole host as one JAX device

The library runs as ``train.py`` places it (``iclwl.training.sharding.place``): by default the CPU host is split into
one JAX device per core (``--cpu-devices``, ``train.cpu_devices``; 0 = one per core); members go to different devices
(padded to a multiple of them), a member's batch is split over devices only for large steps, and members that
share a device are batched by vmap when their step is small, else run one after another (``--member-loop``,
``train.member_loop``).

Settings: (a) 'default' = the default experiment (conf/task/bursty, conf/model/small, batch 64);
(b) 'reddy2023' = K = 512, B = 2, D = 63, L = 8, batch 128, two attention-only layers with an MLP readout;
(c) 'chan2024' = Chan et al. 2024's task with a finite training set of N = 1024 sequences (L = 1, D = 64,
5 + 5 classes, p_high 0.9), a 2-block 1-head GPT with d = 64, Adam 3e-4, batch 32.

``--end-to-end STEPS`` times whole processes as well: ``train.py`` with the setting's overrides (its defaults for
everything else: 26 evaluations with the mechanism measures, a checkpoint at each, the figure) once with an empty
compilation cache and once more with the cache the first run filled, against a process of the baseline that
trains as many steps and evaluates as often (``--baseline-run``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from data_gen import TaskSpec, dynamic_part, make_universe, sample_batch
from data_gen.presets import preset
from iclwl.config import Config, ModelConfig, OptimConfig, TrainConfig, validate_config
from iclwl.models.fast_paths import FastTransformer
from iclwl.run import ensemble_static
from iclwl.training.optim import make_optimizer
from iclwl.training.program import Ensemble, Program, member_inputs
from iclwl.training.schedule import eval_schedule
from iclwl.training.sharding import place, use_cpu_devices

SETTINGS = {
    "default": Config(
        task=TaskSpec(n_classes=1088, n_holdout=64),
        model=ModelConfig(n_layers=2, n_heads=2, d_model=64, mlp_ratio=4.0),
        train=TrainConfig(batch_size=64, steps=100_000),
    ),
    "reddy2023": Config(
        task=preset("reddy2023", K=512),
        model=ModelConfig(
            n_layers=2,
            n_heads=1,
            d_model=128,
            mlp_ratio=0.0,
            layernorm="none",
            pos="onehot",
            max_offset=32,
            readout_hidden=(128, 128),
        ),
        optim=OptimConfig(name="sgd", lr=0.01, momentum=0.0),
        train=TrainConfig(batch_size=128, steps=100_000),
    ),
    "chan2024": Config(
        task=preset("chan2024", N=1024),
        model=ModelConfig(n_layers=2, n_heads=1, d_model=64, mlp_ratio=4.0, layernorm="pre", pos="learned"),
        optim=OptimConfig(name="adam", lr=3e-4),
        train=TrainConfig(batch_size=32, steps=100_000),
    ),
}

# train.py overrides that make a setting's run (``--end-to-end``); the run's other settings are train.py's defaults
COMMANDS = {
    "chan2024": ["experiment=none", "task=chan2024", "task.N=1024", "model=chan2024", "optim=adam", "optim.lr=3e-4",
                 "train.batch_size=32"],
}  # fmt: skip


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a large fp32 matmul: the practical peak of this device."""
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


def model_flops(cfg: Config) -> float:
    """FLOPs of one training step of one member (forward + backward of the model, from XLA's cost analysis)."""
    st = cfg.task
    model = FastTransformer(cfg.model, st.D, st.n_labels, st.L, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    B = cfg.train.batch_size
    x, y = jnp.zeros((B, st.L + 1, st.D)), jnp.zeros((B, st.L + 1), jnp.int32)

    def loss(p):
        logits = nnx.merge(graphdef, p)(x, y, query_only=True)[:, -1]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y[:, -1]).mean()

    cost = jax.jit(jax.grad(loss)).lower(params).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"])


class LibraryRun:
    """M members of ``cfg`` placed as ``train.py`` places them (``iclwl.training.sharding.place``, from the config's
    ``train.member_loop`` and ``train.split_batch``; ``devices``: the devices it may use), compiled by the first
    ``call``. A fresh program each (``Ensemble``, not the process-wide ``compiled`` cache), so runs of one program
    in other layouts share nothing. Padding members (``place`` pads members to a multiple of the devices) train
    too but are not counted."""

    def __init__(self, cfg: Config, members: int, devices: list | None = None):
        c = validate_config(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seeds=(0,))))
        st = ensemble_static(c)
        t = c.train
        flops = Ensemble(Program.of(c, st)).step_flops(make_universe(st), member_inputs(c)[1])
        placement = place(members, t.batch_size, flops, t.member_loop, t.split_batch, devices)
        train = dataclasses.replace(t, seeds=tuple(range(placement.size)), member_loop=placement.loop)
        c = validate_config(dataclasses.replace(c, train=train))
        layout = placement.layout
        g, b = layout.mesh.shape["members"], layout.mesh.shape["batch"]
        pad = f", +{placement.size - members} padding" if placement.size > members else ""
        self.members, self.t = members, 0
        self.where = f"{g * b} device(s): members {g}-way, batch {b}-way, {placement.loop}{pad}"
        self.ens = Ensemble(Program.of(c, st, layout.mesh))
        self.uni = layout.put_replicated(make_universe(st))
        init, mem = member_inputs(c)
        self.state, self.mem = self.ens.init(layout.put_members(init)), layout.put_members(mem)

    def call(self, steps: int) -> float:
        """Seconds for the next ``steps`` steps of every member (one call of the chunk)."""
        start = time.perf_counter()
        self.state, _ = self.ens.chunk(self.uni, self.state, self.mem, jnp.int32(self.t),
                                       jnp.int32(self.t + steps), n=steps)  # fmt: skip
        jax.block_until_ready(self.state)
        self.t += steps
        return time.perf_counter() - start


def bench_library(cfg: Config, members: list[int], chunk: int, repeats: int, member_loop: str) -> dict[int, dict]:
    """steps/s and compile time of the library for each ensemble size. The sizes' timed calls alternate (size 1,
    size 8, ..., then again), so a drift in the host's speed reaches every size alike and their ratios hold."""
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, member_loop=member_loop))
    runs = {M: LibraryRun(cfg, M) for M in members}
    compile_s = {M: run.call(chunk) for M, run in runs.items()}  # the first call compiles
    times = {M: [] for M in members}
    for _ in range(repeats):
        for M, run in runs.items():
            times[M].append(run.call(chunk))
    return {M: {"steps_per_s": chunk / statistics.median(times[M]), "compile_s": compile_s[M]} for M in members}


def bench_generation(cfg: Config, chunk: int, repeats: int) -> float:
    """Milliseconds to generate one training batch of one member on the device (a scan of ``chunk`` batches)."""
    st, p = ensemble_static(cfg), dynamic_part(cfg.task)
    uni, B = make_universe(st), cfg.train.batch_size

    @jax.jit
    def batches(key):
        def body(total, t):
            b = sample_batch(st, uni, p, jax.random.fold_in(key, t), B)
            return total + b.items.sum() + b.labels.sum(), None

        return jax.lax.scan(body, 0.0, jnp.arange(chunk))[0]

    jax.block_until_ready(batches(jax.random.key(0)))
    times = []
    for r in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(batches(jax.random.key(r + 1)))
        times.append(time.perf_counter() - t)
    return statistics.median(times) / chunk * 1e3


# ------------------------------------------------------------------------------------------------ the baseline


def numpy_reddy_batch(rng: np.random.Generator, protos: np.ndarray, cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """A bursty batch made on the host, as a one-off script would: L/B classes, each B times, query among them."""
    st, B = cfg.task, cfg.train.batch_size
    K = protos.shape[0]
    n_cls = st.L // st.B
    classes = np.stack([rng.choice(K, n_cls, replace=False) for _ in range(B)])  # (B, L/B)
    ctx = np.repeat(classes, st.B, axis=1)  # (B, L)
    ctx = np.take_along_axis(ctx, rng.permuted(np.tile(np.arange(st.L), (B, 1)), axis=1), axis=1)
    query = classes[np.arange(B), rng.integers(0, n_cls, B)]
    seq = np.concatenate([ctx, query[:, None]], axis=1)  # (B, L+1)
    eps = st.noise_scale
    items = (protos[seq] + eps * rng.normal(size=(B, st.L + 1, st.D)) / np.sqrt(st.D)) / np.sqrt(1 + eps**2)
    return items.astype(np.float32), (seq % st.n_labels).astype(np.int32)


def numpy_chan_set(rng: np.random.Generator, protos: np.ndarray, cfg: Config, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` sequences of Chan 2024's task made on the host: the query's class from the two frequency groups; with
    probability p_relevant one context item (at a random place) of the query's class, the others of other classes."""
    st = cfg.task
    K = protos.shape[0]
    freq = np.where(np.arange(K) < st.n_high, st.p_high / st.n_high, (1 - st.p_high) / (K - st.n_high))
    query = rng.choice(K, n, p=freq)
    ctx = (query[:, None] + rng.integers(1, K, (n, st.L))) % K  # other classes
    relevant = rng.random(n) < st.p_relevant
    ctx[relevant, rng.integers(0, st.L, relevant.sum())] = query[relevant]
    seq = np.concatenate([ctx, query[:, None]], axis=1)  # (n, L+1)
    items = protos[seq] + st.noise_scale * rng.normal(size=(n, st.L + 1, st.D))
    return items.astype(np.float32), seq.astype(np.int32)


class Baseline:
    """One member as a one-off script trains it: batches made on the host with NumPy (Chan 2024: drawn from a
    stored training set of N sequences; otherwise fresh bursty ones) and a jitted step called once per batch."""

    def __init__(self, cfg: Config):
        st, self.cfg = cfg.task, cfg
        model = FastTransformer(cfg.model, st.D, st.n_labels, st.L, rngs=nnx.Rngs(0))
        graphdef, self.params = nnx.split(model, nnx.Param)
        tx = make_optimizer(cfg.optim, cfg.train.steps, self.params)
        self.opt_state = tx.init(self.params)
        self.rng = np.random.default_rng(0)
        K = st.max_classes if st.K is None else st.K
        self.protos = self.rng.normal(size=(K, st.D)) / np.sqrt(st.D)
        if st.prototype == "unit":
            self.protos /= np.linalg.norm(self.protos, axis=1, keepdims=True)
        self.stored = numpy_chan_set(self.rng, self.protos, cfg, st.N) if st.N else None

        def logits(p, items, labels):
            return nnx.merge(graphdef, p)(items, labels)[:, -1]

        @jax.jit
        def step(params, opt_state, items, labels):
            def loss(p):
                return optax.softmax_cross_entropy_with_integer_labels(logits(p, items, labels), labels[:, -1]).mean()

            updates, opt_state = tx.update(jax.grad(loss)(params), opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        self.step = step
        self.accuracy = jax.jit(lambda p, items, labels: (logits(p, items, labels).argmax(-1) == labels[:, -1]).mean())

    def batch(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if self.stored is not None:
            index = self.rng.integers(0, len(self.stored[0]), n)
            return self.stored[0][index], self.stored[1][index]
        if self.cfg.task.noise == "additive":
            return numpy_chan_set(self.rng, self.protos, self.cfg, n)
        return numpy_reddy_batch(self.rng, self.protos, self.cfg)

    def train(self, steps: int) -> None:
        for _ in range(steps):
            self.params, self.opt_state = self.step(self.params, self.opt_state, *self.batch(self.cfg.train.batch_size))
        jax.block_until_ready(self.params)


def bench_baseline(cfg: Config, n_steps: int, repeats: int) -> dict:
    base = Baseline(cfg)
    t = time.perf_counter()
    base.train(1)
    compile_s = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        base.train(n_steps)
        times.append(time.perf_counter() - t)
    return {"steps_per_s": n_steps / statistics.median(times), "compile_s": compile_s}


def baseline_run(name: str, steps: int, n_log: int = 16, n_eval: int = 512) -> None:
    """A whole baseline process (``--baseline-run``): ``steps`` steps, with the accuracy on two fixed sets of
    ``n_eval`` host-made sequences evaluated at the steps train.py evaluates at by default."""
    base = Baseline(SETTINGS[name])
    sets = [base.batch(n_eval) for _ in range(2)]
    t, accs = 0, []
    for target in eval_schedule(steps, n_log, 0):
        base.train(int(target) - t)
        t = int(target)
        accs.append([float(base.accuracy(base.params, *s)) for s in sets])
    print(f"baseline {name}: {steps} steps, {len(accs)} evaluations, final accuracies {accs[-1]}")


def end_to_end(name: str, steps: int, repeats: int) -> dict[str, float]:
    """Median wall seconds of whole processes: train.py with an empty compilation cache, train.py again with the
    cache it filled, and the baseline process; each repeat runs the three in turn in fresh directories."""
    root = Path(__file__).resolve().parents[1]
    times: dict[str, list[float]] = {"train.py, empty cache": [], "train.py, second run": [], "baseline": []}
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(Path(tmp) / "cache"), "WANDB_MODE": "disabled"}
            train = [sys.executable, str(root / "train.py"), *COMMANDS[name], f"train.steps={steps}",
                     "logging.progress=false"]  # fmt: skip
            runs = {"train.py, empty cache": [*train, f"hydra.run.dir={tmp}/first"],
                    "train.py, second run": [*train, f"hydra.run.dir={tmp}/second"],
                    "baseline": [sys.executable, __file__, "--baseline-run", name, "--steps", str(steps)]}  # fmt: skip
            for what, command in runs.items():
                t = time.perf_counter()
                subprocess.run(command, env=env, check=True, capture_output=True, cwd=tmp)
                times[what].append(time.perf_counter() - t)
    return {what: statistics.median(ts) for what, ts in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--members", nargs="+", type=int, default=[1, 8, 32])
    ap.add_argument("--chunk", type=int, default=100, help="steps per timed call")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls; the median is reported")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--cpu-devices", type=int, default=0,
                    help="JAX devices to split a CPU host into (0: one per core, as train.py)")  # fmt: skip
    ap.add_argument("--member-loop", default="auto", choices=["auto", "vmap", "map"])
    ap.add_argument("--end-to-end", type=int, default=0, metavar="STEPS",
                    help=f"also time whole processes of STEPS steps ({', '.join(COMMANDS)}); 0: no")  # fmt: skip
    ap.add_argument("--e2e-repeats", type=int, default=3, help="whole-process runs of each kind; the median")
    ap.add_argument("--baseline-run", choices=list(SETTINGS), help=argparse.SUPPRESS)  # one process of end_to_end
    ap.add_argument("--steps", type=int, default=1500, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.baseline_run:
        baseline_run(args.baseline_run, args.steps)
        return
    use_cpu_devices(args.cpu_devices)

    peak = matmul_peak()
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), {jax.device_count()} device(s); "
          f"member loop {args.member_loop}; fp32 matmul peak {peak / 1e9:.1f} GFLOP/s (one device)")  # fmt: skip
    print()
    print("| setting | runner | M | steps/s | member-steps/s | sequences/s | compile s | model GFLOP/s | of peak |")
    print("|---|---|---|---|---|---|---|---|---|")
    notes = []
    for name in args.settings:
        cfg = SETTINGS[name]
        flops = model_flops(cfg)
        B = cfg.train.batch_size
        rows = []
        if not args.no_baseline:
            rows.append(("baseline (NumPy host data, jit per step)", 1, bench_baseline(cfg, args.chunk, args.repeats)))
        for M, r in bench_library(cfg, args.members, args.chunk, args.repeats, args.member_loop).items():
            rows.append(("iclwl (on-device data, scan)", M, r))
        for runner, M, r in rows:
            ms = r["steps_per_s"] * M
            print(f"| {name} | {runner} | {M} | {r['steps_per_s']:.1f} | {ms:.1f} | {ms * B:.0f} | "
                  f"{r['compile_s']:.1f} | {ms * flops / 1e9:.1f} | {ms * flops / peak:.0%} |", flush=True)  # fmt: skip
        single = [r for runner, M, r in rows if M == 1 and runner.startswith("iclwl")]
        if single and not args.no_baseline:
            notes.append(f"{name}: one member trains {single[0]['steps_per_s'] / rows[0][2]['steps_per_s']:.2f}x as "
                         "many steps/s as the baseline")  # fmt: skip
        if single:
            gen_ms, step_ms = bench_generation(cfg, args.chunk, args.repeats), 1e3 / single[0]["steps_per_s"]
            notes.append(f"{name}: generating a batch takes {gen_ms:.2f} ms, {gen_ms / step_ms:.1%} of a training "
                         f"step of one member ({step_ms:.2f} ms, generation included)")  # fmt: skip
    print()
    for note in notes:
        print(note)
    e2e = [name for name in args.settings if name in COMMANDS] if args.end_to_end else []
    if e2e:
        print(f"\nwhole processes of {args.end_to_end} steps, median of {args.e2e_repeats} (wall seconds):\n")
        print("| setting | process | seconds | steps/s | baseline / this |")
        print("|---|---|---|---|---|")
    for name in e2e:
        times = end_to_end(name, args.end_to_end, args.e2e_repeats)
        for what, sec in times.items():
            print(f"| {name} | {what} | {sec:.1f} | {args.end_to_end / sec:.0f} | {times['baseline'] / sec:.2f} |",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
