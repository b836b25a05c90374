"""asl.jax vs asl.functional: agreement and speed of value + gradient (jit'd JAX vs the fused PyTorch loss).

    python bench/bench_jax.py [--threads 1]

Prints the largest difference of values and gradients over every option of the parity test and
the median time of one value-and-gradient call per shape, with the ratio JAX / PyTorch.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    os.environ.setdefault(
        "XLA_FLAGS",
        f"--xla_cpu_multi_thread_eigen={'true' if args.threads > 1 else 'false'} "
        f"intra_op_parallelism_threads={args.threads}",
    )
    import jax
    import numpy as np
    import torch

    from asl.functional import asymmetric_loss
    from asl.jax import asymmetric_loss as jasl

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    worst_v = worst_g = 0.0
    for (gn, gp, m), detach, smooth in itertools.product(
        [(0, 0, 0), (2, 2, 0), (4, 0, 0.05), (4, 1, 0.05), (3.5, 0.5, 0.2)], [True, False], [0.0, 0.1]
    ):
        x = (rng.standard_normal((64, 80)) * 4).astype(np.float32)
        y = (rng.random((64, 80)) < 0.05).astype(np.float32)
        xt = torch.tensor(x, requires_grad=True)
        ref = asymmetric_loss(
            xt,
            torch.tensor(y),
            gamma_neg=gn,
            gamma_pos=gp,
            clip=m,
            disable_torch_grad_focal_loss=detach,
            label_smoothing=smooth,
            reduction="none",
        )
        ref.sum().backward()
        kw = dict(gamma_neg=gn, gamma_pos=gp, clip=m, stop_gradient_focusing=detach, label_smoothing=smooth)
        v = np.asarray(jasl(x, y, **kw))
        g = np.asarray(jax.grad(lambda z, y=y, kw=kw: jasl(z, y, **kw).sum())(x))
        worst_v = max(worst_v, float(np.abs(v - ref.detach().numpy()).max()))
        worst_g = max(worst_g, float(np.abs(g - xt.grad.numpy()).max()))
    print(f"parity over 20 option sets: max |value diff| {worst_v:.2e}, max |grad diff| {worst_g:.2e}")

    print(f"{'shape':>14} {'torch (us)':>11} {'jax jit (us)':>13} {'jax/torch':>10}")
    for n, c in [(128, 80), (128, 1000), (64, 9605), (1024, 9605)]:
        x = (rng.standard_normal((n, c)) * 3).astype(np.float32)
        y = (rng.random((n, c)) < 0.03).astype(np.float32)
        xt, yt = torch.tensor(x, requires_grad=True), torch.tensor(y)
        f = jax.jit(jax.value_and_grad(lambda z, t: jasl(z, t, gamma_neg=4, gamma_pos=0, clip=0.05).sum()))
        xj, yj = jax.numpy.asarray(x), jax.numpy.asarray(y)
        jax.block_until_ready(f(xj, yj))

        def torch_call(xt=xt, yt=yt):
            xt.grad = None
            asymmetric_loss(xt, yt, gamma_neg=4, gamma_pos=0, clip=0.05).backward()

        def jax_call(f=f, xj=xj, yj=yj):
            jax.block_until_ready(f(xj, yj))

        times = {}
        for name, fn in (("torch", torch_call), ("jax", jax_call)):
            fn()
            ts = []
            for _ in range(21 if n * c < 1e6 else 7):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            times[name] = statistics.median(ts) * 1e6
        print(f"{f'({n},{c})':>14} {times['torch']:11.0f} {times['jax']:13.0f} {times['jax'] / times['torch']:9.2f}x")


if __name__ == "__main__":
    main()
