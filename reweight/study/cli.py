"""``reweight-study``: does reweighting beat DAPO here, and why? Arms × seeds of real training, then the paper's measurements.

    reweight-study --smoke                                   # 1 seed, dapo vs low_prob, 2 steps: every section, minutes
    reweight-study                                           # the default study: 4 arms x 9 seeds on the embedded task (~1 h, 2 cores)
    reweight-study --arms literature --seeds 1,2             # the family of token weights
    reweight-study --arm low_prob_0.5="actor_rollout_ref.actor.policy_loss.scheme=low_prob actor_rollout_ref.actor.policy_loss.alpha=0.5"
    reweight-study --config-name qwen25_math_7b_dapo --test-data data/aime24.parquet --launch slurm \\
        --nodes 4 --gpus-per-node 8 --dry-run                # one SLURM job per run; prints the plan

Arms are lists of Hydra overrides on top of the base config (--config-name, default embedded); every
arm is trained once per seed (the top-level ``seed`` key) and compared with the arm ``dapo``. Positional
arguments are Hydra overrides applied to every run. Every run's config is composed and checked before
the first one starts. Rerunning the same command resumes: finished steps are skipped. The report is
OUT/report.md (with report.json and the figures).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from reweight.study.spec import ARM_PRESETS, StudyInputError, StudySpec


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reweight-study", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="Hydra overrides applied to every run (e.g. trainer.total_training_steps=30)")
    p.add_argument("--out", default=None, help="study directory (default: outputs/study, or outputs/study-smoke with --smoke)")
    p.add_argument("--smoke", action="store_true", help="1 seed, arms dapo and low_prob, 2 training steps, few samples")
    p.add_argument("--config-name", default="embedded", help="base training config (default: embedded)")
    p.add_argument("--arms", default=None, help=f"arm preset ({', '.join(ARM_PRESETS)}) or a YAML file NAME: [overrides]")
    p.add_argument("--arm", action="append", default=[], metavar="NAME=OVERRIDES", help="add or replace one arm (space-separated overrides)")
    p.add_argument("--seeds", type=_ints, default=None, help="comma-separated seeds (default 1..9; --smoke 1)")
    p.add_argument("--steps", type=int, default=None, help="training steps of every run (default 10; --smoke 2)")
    p.add_argument("--test-data", default=None, help="evaluation problems, verl parquet (default: the embedded test split)")
    p.add_argument("--n", type=int, default=None, help="samples per test problem (default 16; --smoke 4)")
    p.add_argument("--scorer", default=None, help="dapo (the training reward, default), verl or boxed")
    p.add_argument("--independent-sampling", action="store_true",
                   help="do not pair the runs' rollouts with common random numbers (hf rollout; see docs/study.md)")
    p.add_argument("--launch", default="local", choices=("local", "ray", "slurm"), help="where the training runs go")
    p.add_argument("--address", default=None, help="Ray cluster address (--launch ray)")
    p.add_argument("--nodes", type=int, default=None, help="nodes per run (--launch slurm)")
    p.add_argument("--gpus-per-node", type=int, default=None, help="GPUs per node (--launch slurm)")
    p.add_argument("--partition", default=None)
    p.add_argument("--account", default=None)
    p.add_argument("--time", dest="time_limit", default=None, help="SLURM time limit per run")
    p.add_argument("--jobs", type=int, default=None,
                   help="training runs at once (local or ray launcher). Default: 2 for the embedded config on a machine "
                        "without a GPU (2 runs at once finish in 0.86x the time of one after the other on 2 cores), "
                        "else 1. Results do not depend on it")
    p.add_argument("--dry-run", action="store_true", help="validate every run and print the plan; train nothing")
    p.add_argument("--overwrite", action="store_true", help="discard the results of a study with other settings in --out")
    return p


def _arms(args: argparse.Namespace, default: dict[str, list[str]]) -> dict[str, list[str]]:
    arms = {k: list(v) for k, v in default.items()}
    if args.arms:
        if args.arms in ARM_PRESETS:
            arms = {k: list(v) for k, v in ARM_PRESETS[args.arms].items()}
        else:
            path = Path(args.arms)
            if not path.is_file():
                raise StudyInputError(f"--arms {args.arms!r}: neither a preset ({', '.join(ARM_PRESETS)}) nor a file")
            from omegaconf import OmegaConf

            data = OmegaConf.to_container(OmegaConf.load(path))
            if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
                raise StudyInputError(f"--arms {args.arms!r}: expected a mapping NAME: [override, ...]")
            arms = {str(k): [str(o) for o in v] for k, v in data.items()}
    for item in args.arm:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise StudyInputError(f"--arm {item!r}: expected NAME=OVERRIDES")
        arms[name] = text.split()
    return arms


def default_jobs(launch: str, config_name: str) -> int:
    """Training runs at once when ``--jobs`` is not given: 2 for the embedded config trained locally on a machine
    without a GPU (its runs leave cores idle while verl starts and stops), else 1 (a GPU run takes its devices)."""
    if launch != "local" or config_name != "embedded":
        return 1
    import torch

    return 1 if torch.cuda.is_available() else 2


def spec_from_args(args: argparse.Namespace) -> StudySpec:
    spec = StudySpec.smoke() if args.smoke else StudySpec()
    changes = {
        "config_name": args.config_name, "arms": _arms(args, spec.arms), "overrides": [*spec.overrides, *args.overrides],
    }
    for key, value in (("seeds", args.seeds), ("train_steps", args.steps), ("test_data", args.test_data), ("n", args.n), ("scorer", args.scorer)):
        if value is not None:
            changes[key] = value
    if args.independent_sampling:
        changes["paired_sampling"] = False
    for key, value in changes.items():
        setattr(spec, key, value)
    return spec


def run_cli_args(args: argparse.Namespace) -> int:
    from reweight.file_checks import require_output
    from reweight.study.pipeline import Study

    spec = spec_from_args(args)
    out = args.out or ("outputs/study-smoke" if args.smoke else "outputs/study")
    require_output(out, "--out", "dir")  # before any run is composed or trained
    options = {k: getattr(args, k) for k in ("address", "nodes", "gpus_per_node", "partition", "account", "time_limit")}
    jobs = args.jobs if args.jobs is not None else default_jobs(args.launch, spec.config_name)
    study = Study(spec, out, launch=args.launch, overwrite=args.overwrite, launch_options=options, jobs=jobs)
    study.prepare(write=not args.dry_run)
    steps = study.steps()
    print(f"[study] {len(study.runs)} training runs ({len(spec.arms)} arms x {len(spec.seeds)} seeds), {len(steps)} steps, out {study.out}")
    if args.dry_run:
        from reweight.study.cluster import plan_run

        for run in study.runs:
            plan = plan_run(study, run, dry_run=True)
            print(f"  {plan['run']}: " + "; ".join(f"{k}: {v}" for k, v in plan.items() if k not in ("run", "job")))
        for step in steps[len(study.runs):]:
            print(f"  then: {step.label}")
        print("[study] dry run: every run's config is composed and checked; nothing trained.")
        return 0
    study.run(steps)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Bad settings: one line and exit 2 (:mod:`reweight.cli_errors`); a failed step: its log and exit 1."""
    from reweight.cli_errors import run_cli
    from reweight.study.pipeline import StudyStepError

    args = build_parser().parse_args(argv)

    def body() -> int:
        try:
            return run_cli_args(args)
        except StudyStepError as err:  # not bad input: the message names the step and its log
            print(f"reweight-study: {err}\nrerun the same command to resume.", file=sys.stderr)
            return 1

    return run_cli("reweight-study", body)


if __name__ == "__main__":
    sys.exit(main())
