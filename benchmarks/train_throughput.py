"""Training throughput: the library's fused ensemble chunk against a straightforward baseline.

For each setting and ensemble size M it prints steps/s (of the whole ensemble), member-steps/s, sequences/s,
compile time, and model FLOP/s, with the ratio to a large fp32 matmul timed in the same run (this machine's
practical peak). The baseline is what a one-off script does: batches generated with NumPy on the host and a
jitted train step called once per batch (one member). The timed calls of the ensemble sizes alternate, so a
drift in the host's speed does not bias the ratio of M = 8 to M = 1.

    python benchmarks/train_throughput.py                      # both settings, M = 1, 8, 32
    python benchmarks/train_throughput.py --settings reddy2023 --members 1 --repeats 5
    python benchmarks/train_throughput.py --cpu-devices 1      # the whole host as one JAX device

The library runs as ``train.py`` places it (``iclwl.sharding.Layout``): by default the CPU host is split into one
JAX device per core (``--cpu-devices``, ``train.cpu_devices``; 0 = one per core); members go to different devices,
and a member's batch is split over them when members are fewer than devices. Members that share a device run one
after another (``--member-loop``, ``train.member_loop``).

Settings: (a) 'default' = the default experiment (conf/task/bursty, conf/model/small, batch 64);
(b) 'reddy2023' = K = 512, B = 2, D = 63, L = 8, batch 128, two attention-only layers with an MLP readout.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from data_gen import TaskSpec, dynamic_part, make_universe, sample_batch
from data_gen.presets import preset
from iclwl.config import Config, ModelConfig, OptimConfig, TrainConfig, validate_config
from iclwl.model import Transformer
from iclwl.optim import make_optimizer
from iclwl.run import ensemble_static
from iclwl.sharding import Layout, use_cpu_devices
from iclwl.training import Ensemble, Program, member_inputs

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
}


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
    model = Transformer(cfg.model, st.D, st.n_labels, st.L, rngs=nnx.Rngs(0))
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
    """M members of ``cfg`` placed on ``devices`` as ``train.py`` places them (``iclwl.sharding.Layout``), compiled
    by the first ``call``. A fresh program each (``Ensemble``, not the process-wide ``compiled`` cache), so runs
    of one program in other layouts share nothing."""

    def __init__(self, cfg: Config, members: int, devices: list | None = None):
        train = dataclasses.replace(cfg.train, seeds=tuple(range(members)))
        c = validate_config(dataclasses.replace(cfg, train=train))
        st = ensemble_static(c)
        layout = Layout.for_members(members, c.train.batch_size, devices)
        self.members, self.t, self.where = members, 0, layout.describe()
        self.ens = Ensemble(Program.of(c, st, layout.mesh))
        self.uni = layout.put_replicated(make_universe(st))
        init, mem = member_inputs(c)
        self.state, self.mem = self.ens.init(layout.put_members(init)), layout.put_members(mem)

    def call(self, steps: int) -> float:
        """Seconds for the next ``steps`` steps of every member (one call of the chunk)."""
        start = time.perf_counter()
        self.state, out = self.ens.chunk(self.uni, self.state, self.mem, jnp.int32(self.t),
                                         jnp.int32(self.t + steps), n=steps)  # fmt: skip
        jax.block_until_ready(out)
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


def bench_baseline(cfg: Config, n_steps: int, repeats: int) -> dict:
    st = cfg.task
    model = Transformer(cfg.model, st.D, st.n_labels, st.L, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    tx = make_optimizer(cfg.optim, cfg.train.steps, params)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, items, labels):
        def loss(p):
            logits = nnx.merge(graphdef, p)(items, labels)[:, -1]
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels[:, -1]).mean()

        grads = jax.grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    rng = np.random.default_rng(0)
    K = st.max_classes if st.K is None else st.K
    protos = rng.normal(size=(K, st.D)) / np.sqrt(st.D)
    t = time.perf_counter()
    params, opt_state = step(params, opt_state, *numpy_reddy_batch(rng, protos, cfg))
    jax.block_until_ready(params)
    compile_s = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(n_steps):
            params, opt_state = step(params, opt_state, *numpy_reddy_batch(rng, protos, cfg))
        jax.block_until_ready(params)
        times.append(time.perf_counter() - t)
    return {"steps_per_s": n_steps / statistics.median(times), "compile_s": compile_s}


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
    args = ap.parse_args()
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
        if single:
            gen_ms, step_ms = bench_generation(cfg, args.chunk, args.repeats), 1e3 / single[0]["steps_per_s"]
            notes.append(f"{name}: generating a batch takes {gen_ms:.2f} ms, {gen_ms / step_ms:.1%} of a training "
                         f"step of one member ({step_ms:.2f} ms, generation included)")  # fmt: skip
    print()
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
