"""Plot the direction monitor's curves (``direction/`` keys) of one ``reweight-train`` run.

    python docs/plot_direction.py METRICS.jsonl                # writes docs/direction.png
    python docs/plot_direction.py METRICS.jsonl --out d.png --title "embedded, freq 1"

METRICS.jsonl is verl's metrics file that ``reweight-train`` writes beside the checkpoints
(``<trainer.default_local_dir>/metrics-<time>.jsonl``, read with :func:`reweight.train.read_metrics`).
Left: mean Δlog p with its 5-95 % band, and the means over positive- and negative-advantage tokens.
Middle: the fractions of tokens with abs(Δlog p) > 0.5 and > 1. Right: the correlation of the token weight
with Δlog p. docs/monitor.md explains each key; docs/direction.png is this script on the run it names.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from reweight.direction import PREFIX  # noqa: E402
from reweight.io import save_figure_atomic  # noqa: E402
from reweight.train import read_metrics  # noqa: E402


def direction_curves(records: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """``{key without the prefix: (steps, values)}`` for every ``direction/`` scalar of the records."""
    out: dict[str, tuple[list[int], list[float]]] = {}
    for rec in sorted(records, key=lambda r: int(r["step"])):
        for key, value in (rec.get("data") or {}).items():
            if key.startswith(PREFIX) and isinstance(value, (int, float)):
                steps, values = out.setdefault(key[len(PREFIX):], ([], []))
                steps.append(int(rec["step"]))
                values.append(float(value))
    return out


def plot(metrics: Path, out: Path, title: str | None = None) -> Path:
    """Draw the three panels from ``metrics`` and write ``out`` atomically."""
    c = direction_curves(read_metrics(metrics))
    if "logp_diff_mean" not in c:
        raise SystemExit(f"{metrics}: no direction/ metrics (was the run trained with reweight.monitor.freq > 0?)")
    fig, (left, mid, right) = plt.subplots(1, 3, figsize=(13, 3.8), dpi=100)
    steps, mean = c["logp_diff_mean"]
    left.fill_between(steps, c["logp_diff_q05"][1], c["logp_diff_q95"][1], color="tab:red", alpha=0.15,
                      label="5-95 % of tokens")
    left.plot(steps, mean, color="tab:red", lw=2, marker="o", ms=3, label="mean")
    for key, colour, label in (("logp_diff_mean_pos_adv", "tab:green", "mean, advantage > 0"),
                               ("logp_diff_mean_neg_adv", "tab:blue", "mean, advantage < 0")):
        if key in c:
            left.plot(*c[key], color=colour, lw=1.2, ls="--", label=label)
    left.axhline(0, color="black", lw=0.8)
    left.set(xlabel="step", ylabel="Δlog p = log π_old − log π_base", title="direction of the update")
    for t, colour in (("0.5", "tab:orange"), ("1", "tab:purple")):
        if f"frac_abs_gt_{t}" in c:
            mid.plot(*c[f"frac_abs_gt_{t}"], color=colour, lw=2, marker="o", ms=3, label=f"|Δlog p| > {t}")
    mid.set(xlabel="step", ylabel="fraction of response tokens", title="tokens the update has moved")
    if "corr_weight" in c:
        right.plot(*c["corr_weight"], color="tab:brown", lw=2, marker="o", ms=3)
    right.axhline(0, color="black", lw=0.8)
    right.set(xlabel="step", ylabel="corr(w, Δlog p)", title="token weight vs direction", ylim=(-1, 1))
    for ax in (left, mid, right):
        ax.grid(alpha=0.3)
    left.legend(fontsize=8, loc="upper left")
    mid.legend(fontsize=8, loc="upper left")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = save_figure_atomic(fig, out)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("metrics", type=Path, help="a run's metrics-<time>.jsonl")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "direction.png")
    ap.add_argument("--title", default=None)
    args = ap.parse_args(argv)
    if not args.metrics.is_file():
        raise SystemExit(f"{args.metrics}: no such file")
    print(plot(args.metrics, args.out, args.title))


if __name__ == "__main__":
    main()
