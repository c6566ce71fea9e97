"""Benchmarks of reweighted DAPO on verl's trainer (CPU backend or GPU), run on demand.

    python tests/benchmarks/bench_train_step.py step-ratio [--steps 8] [--repeats 2] [--out DIR]
    python tests/benchmarks/bench_train_step.py embedded [--out DIR]
    python tests/benchmarks/bench_train_step.py monitor [--steps 21] [--repeats 1] [--out DIR]

``step-ratio``: the embedded config trained twice with the same seed and the same (deterministically
served, no dynamic-sampling refills) rollouts, once with the reweight loss (scheme low_prob) and once
with verl's vanilla loss; reports the median over steps 2..N of ``timing_s/update_actor`` (where the
loss runs) and of ``timing_s/step``, and their ratios reweight / vanilla (target <= 1.02).

``monitor``: the direction monitor's cost (reweight/monitor.py). The same deterministic run as ``step-ratio``
(reweight loss) at ``reweight.monitor.freq`` 0, 1 and 10; reports, per frequency, the mean of ``timing_s/step``
over steps 2..N (monitored and unmonitored steps alike) and its ratio to freq 0, and the cost of one monitored
forward (median ``timing_s/direction``) as a fraction of the freq-0 median step, divided by the frequency: the
overhead the monitor adds on average, less exposed to this machine's load than the ratio of two runs.

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


def deterministic(steps: int) -> tuple[str, ...]:
    """Overrides for ``steps`` steps on the same (deterministically served, no dynamic-sampling refills) rollouts."""
    return (
        f"trainer.total_training_steps={steps}",
        "trainer.val_before_train=false",
        "trainer.test_freq=-1",
        "trainer.save_freq=-1",
        "algorithm.filter_groups.enable=false",
        "actor_rollout_ref.rollout.full_determinism=true",
    )


def step_ratio(out: Path, steps: int, repeats: int = 1) -> dict:
    common = deterministic(steps)
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


def monitor(out: Path, steps: int, repeats: int = 1) -> dict:
    common = deterministic(steps)
    freqs = (0, 1, 10)
    step_s: dict[int, list[float]] = {f: [] for f in freqs}
    direction_s: dict[int, list[float]] = {f: [] for f in freqs}
    for rep in range(repeats):  # alternate the arms so that a change in machine load hits all
        for freq in freqs:
            records, _ = train(out / f"freq{freq}-{rep}", *common, f"reweight.monitor.freq={freq}")
            per_step = _steps(records)
            for s in sorted(per_step):
                if s >= 2:
                    step_s[freq].append(per_step[s]["timing_s/step"])
                    if "timing_s/direction" in per_step[s]:
                        direction_s[freq].append(per_step[s]["timing_s/direction"])
    base_median = statistics.median(step_s[0])
    result: dict = {"steps_measured": {f: len(v) for f, v in step_s.items()}, "median_step_s_freq0": base_median}
    for freq in freqs:
        mean = statistics.mean(step_s[freq])
        entry = {"mean_step_s": mean, "ratio_mean_step_to_freq0": mean / statistics.mean(step_s[0])}
        if freq and direction_s[freq]:
            cost = statistics.median(direction_s[freq])
            entry.update(median_direction_s=cost, monitored_steps=len(direction_s[freq]),
                         overhead_estimate=cost / base_median / freq)
        result[f"freq{freq}"] = entry
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
    parser.add_argument("what", choices=["step-ratio", "monitor", "embedded"])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1, help="step-ratio: alternating runs per arm")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-"))
    if args.what == "step-ratio":
        result = step_ratio(out, args.steps, args.repeats)
    elif args.what == "monitor":
        result = monitor(out, args.steps, args.repeats)
    else:
        result = embedded(out)
    result["device"] = describe_device("cpu") + " (each training process: 1 torch thread)"
    print(json.dumps(result, indent=2))
    (out / f"{args.what}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
