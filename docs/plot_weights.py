"""Plot w(p) of every token-weight scheme at the default α, and the logit-gradient size it implies.

    python docs/plot_weights.py                 # writes docs/weights.png
    python docs/plot_weights.py --out w.png --alpha 0.1

Left: the weight w(p) each scheme multiplies the advantage by (reweight.weights.token_weights, so the
plot is the code). Right: w(p)·(1 − p), proportional to the ℓ1 norm of a token's logit gradient
(2|w·Â|(1 − p), the paper's Lemma 3.1): how large each token's update is under each scheme.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from reweight.io import save_figure_atomic  # noqa: E402
from reweight.weights import DEFAULT_ALPHA, PROB_SCHEMES, token_weights  # noqa: E402

STYLE = {  # scheme -> (colour, line style); none is the DAPO reference line
    "none": ("black", ":"),
    "low_prob": ("tab:red", "-"),
    "dominate": ("tab:blue", "-"),
    "focal": ("tab:purple", "-."),
    "middle": ("tab:green", "--"),
    "normalize": ("tab:orange", "-"),
}
FORMULA = {
    "none": "1 (DAPO)",
    "low_prob": "1 + α(1 − p)",
    "dominate": "αp + 1 − α",
    "focal": "(1 − p)^α",
    "middle": "α + p(1 − p)",
    "normalize": "1 / (1 + α − p)",
}


def curves(alpha: float, points: int = 501) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """p on [0, 1] (``(points,)``) and each scheme's w(p) at ``alpha`` (``(points,)`` each)."""
    p = torch.linspace(0.0, 1.0, points, dtype=torch.float64)
    return p, {s: token_weights(p, s, alpha) for s in PROB_SCHEMES}


def plot(alpha: float, out: Path) -> Path:
    """Draw both panels and write ``out`` atomically."""
    p, ws = curves(alpha)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2), dpi=110)
    for scheme, w in ws.items():
        colour, ls = STYLE[scheme]
        label = f"{scheme}: {FORMULA[scheme]}"
        left.plot(p, w, color=colour, ls=ls, lw=2, label=label)
        right.plot(p, w * (1 - p), color=colour, ls=ls, lw=2, label=label)
    top = 2.0
    left.set(xlabel="p (probability of the sampled token)", ylabel="w(p)",
             title=f"token weight w(p), α = {alpha:g}", xlim=(0, 1), ylim=(0, top))
    exit_p = 1 + alpha - 1 / top  # where normalize leaves the axes: 1 / (1 + α − p) = top
    if 0 < exit_p < 1:
        left.annotate(f"normalize goes on to 1/α = {1 / alpha:g} at p = 1", xy=(exit_p, top * 0.99),
                      xytext=(0.03, top * 0.8), color=STYLE["normalize"][0], fontsize=8,
                      arrowprops=dict(arrowstyle="->", color=STYLE["normalize"][0]))
    right.set(xlabel="p (probability of the sampled token)", ylabel="w(p)·(1 − p)",
              title="update size ∝ w(p)·(1 − p)  (Lemma 3.1)", xlim=(0, 1), ylim=(0, 1.3))
    for ax in (left, right):
        ax.grid(alpha=0.3)
    left.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    path = save_figure_atomic(fig, out)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alpha", type=float, default=DEFAULT_ALPHA, help="α for every scheme (default: the config's)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "weights.png")
    args = ap.parse_args(argv)
    if not args.alpha > 0:
        raise SystemExit(f"--alpha={args.alpha} must be > 0 (normalize is infinite at p = 1 otherwise)")
    print(plot(args.alpha, args.out))


if __name__ == "__main__":
    main()
