"""Benchmarks of reweighted DAPO on verl's trainer (CPU backend or GPU), run on demand.

    python tests/benchmarks/bench_train_step.py step-ratio [--steps 8] [--repeats 2] [--out DIR]
    python tests/benchmarks/bench_train_step.py embedded [--out DIR]

``step-ratio``: the embedded config trained twice with the same seed and the same (deterministically
served, no dynamic-sampling refills) rollouts, once with the reweight loss (scheme low_prob) and once
with verl's vanilla loss; reports the median over steps 2..N of ``timing_s/update_actor`` (where the
loss runs) and of ``timing_s/step``, and their ratios reweight / vanilla (target <= 1.02).

``embedded``: ``reweight-train`` with no arguments (fresh checkpoint directory): wall time, steps,
held-out accuracy before training (step-0 validation) and after (last validation).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _device import describe_device  # tests/benchmarks/_device.py (run as a script: this folder is on sys.path)

VANILLA = (
    "actor_rollout_ref.actor.policy_loss._target_=verl.workers.config.PolicyLossConfig",
    "actor_rollout_ref.actor.policy_loss.loss_mode=vanilla",
    "~actor_rollout_ref.actor.policy_loss.scheme",
    "~actor_rollout_ref.actor.policy_loss.alpha",
    "~actor_rollout_ref.actor.policy_loss.prob_source",
    "~actor_rollout_ref.actor.policy_loss.apply_to",
    "~actor_rollout_ref.actor.policy_loss.unit_mean",
    "~actor_rollout_ref.actor.policy_loss.kappa",
)
VAL_KEY = "val-core/synthetic_arith/acc/mean@1"


def train(out: Path, *overrides: str, command: tuple[str, ...] | None = None) -> tuple[list[dict], float]:
    out.mkdir(parents=True, exist_ok=True)
    metrics = out / "metrics.jsonl"
    cmd = list(command or (sys.executable, "-m", "reweight.train")) + [
        "trainer.logger=[console,file]",
        f"+ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH={metrics}",
        f"trainer.default_local_dir={out / 'ckpt'}",
        *overrides,
    ]
    t0 = time.time()
    with open(out / "log.txt", "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=out)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"training failed ({proc.returncode}); see {out / 'log.txt'}")
    return [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()], wall


def _steps(records: list[dict]) -> dict[int, dict]:
    return {r["step"]: r["data"] for r in records if "actor/pg_loss" in r["data"]}


def step_ratio(out: Path, steps: int, repeats: int = 1) -> dict:
    common = (
        f"trainer.total_training_steps={steps}",
        "trainer.val_before_train=false",
        "trainer.test_freq=-1",
        "trainer.save_freq=-1",
        "algorithm.filter_groups.enable=false",
        "actor_rollout_ref.rollout.full_determinism=true",
    )
    arms = {"reweight": ("actor_rollout_ref.actor.policy_loss.scheme=low_prob",), "vanilla": VANILLA}
    samples: dict[str, dict[str, list[float]]] = {a: {"update_actor": [], "step": []} for a in arms}
    walls: dict[str, list[float]] = {a: [] for a in arms}
    for rep in range(repeats):  # alternate the arms so that a change in machine load hits both
        for name, extra in arms.items():
            records, wall = train(out / f"{name}-{rep}", *common, *extra)
            per_step = _steps(records)
            for s in sorted(per_step):
                if s >= 2:
                    samples[name]["update_actor"].append(per_step[s]["timing_s/update_actor"])
                    samples[name]["step"].append(per_step[s]["timing_s/step"])
            walls[name].append(round(wall, 1))
    result: dict = {}
    for name in arms:
        result[name] = {
            "wall_s": walls[name],
            "median_update_actor_s": statistics.median(samples[name]["update_actor"]),
            "median_step_s": statistics.median(samples[name]["step"]),
            "steps_measured": len(samples[name]["step"]),
        }
    for key in ("median_update_actor_s", "median_step_s"):
        result[f"ratio_{key}"] = result["reweight"][key] / result["vanilla"][key]
    return result


def embedded(out: Path) -> dict:
    records, wall = train(out / "embedded", command=("reweight-train",))
    vals = [(r["step"], r["data"][VAL_KEY]) for r in records if VAL_KEY in r["data"]]
    per_step = _steps(records)
    return {
        "wall_s": round(wall, 1),
        "train_steps": len(per_step),
        "val_accuracy_before": vals[0][1] if vals and vals[0][0] == 0 else None,
        "val_accuracy_after": vals[-1][1] if vals else None,
        "val_history": vals,
        "median_step_s": statistics.median(m["timing_s/step"] for m in per_step.values()) if per_step else None,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["step-ratio", "embedded"])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1, help="step-ratio: alternating runs per arm")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-"))
    result = step_ratio(out, args.steps, args.repeats) if args.what == "step-ratio" else embedded(out)
    result["device"] = describe_device("cpu") + " (each training process: 1 torch thread)"
    print(json.dumps(result, indent=2))
    (out / f"{args.what}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
