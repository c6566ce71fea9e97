"""Evaluation throughput on this machine (run on demand: python tests/benchmarks/bench_evaluation.py).

Measures: unbiased pass@k over many problems with n in the thousands, the bootstrap summary,
the math_verify checker per response, and the teacher-forced support scoring of a tiny model.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def timed(fn, repeat: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--problems", type=int, default=500)
    parser.add_argument("--n", type=int, default=4096)
    args = parser.parse_args()

    from reweight.evaluation.metrics import pass_at_k_array, summarise
    from reweight.evaluation.scoring import is_correct

    rng = np.random.default_rng(0)
    c = rng.integers(0, args.n + 1, size=args.problems)
    t = timed(lambda: pass_at_k_array(args.n, c, 64))
    print(f"pass@64, {args.problems} problems, n={args.n}: {1e3 * t:.1f} ms")
    n_by = {"a": np.full(args.problems // 2, 32), "b": np.full(args.problems // 2, 32)}
    c_by = {g: rng.integers(0, 33, size=v.size) for g, v in n_by.items()}
    t = timed(lambda: summarise(n_by, c_by, ks=[1, 2, 4, 8, 16, 32], num_resamples=1000))
    print(f"summarise: {args.problems} problems, 6 ks + avg@32, 1000 bootstrap resamples: {t:.2f} s")
    cases = [("so \\boxed{\\frac{1}{2}}", "0.5"), ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}"), ("\\boxed{17}", "18")] * 20
    is_correct(*cases[0])  # warm-up: imports
    t = timed(lambda: [is_correct(r, g) for r, g in cases])
    print(f"math checker: {1e3 * t / len(cases):.2f} ms per response")


if __name__ == "__main__":
    main()
