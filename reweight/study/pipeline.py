"""Running a study: validate every run, then train, evaluate, analyse and report, resumably.

Layout of ``OUT``::

    study.json                       the settings (a rerun with other settings is refused)
    runs/<arm>/s<seed>/              one training run: checkpoints/, metrics.jsonl (verl's file logger), train.log
    eval/base.jsonl, eval/<arm>/s<seed>.jsonl     reweight-eval results (n samples per test problem)
    support/<arm>/s<seed>.json       Invisible Leash support / entropy of the trained model vs the base
    prompts/s<seed>_<first>_<count>.parquet  the test prompts of one seed's analysis / decoding step
    analysis/<arm>/s<seed>/          reweight-analyze: Δlog p, entropy, KL of the base vs the arm's model, per seed
    decode/dapo/s<seed>/, decode/best/s<seed>/   reweight-decode sweeps per seed: replacement (Fig. 1c), extrapolation (Fig. 4)
    logs/<step>.log                  the full output of every step
    steps/<step>.json                a finished step (what a rerun skips)
    report.md, report.json, *.png    :mod:`reweight.study.report`

Every step calls the same library or CLI function a user would (``reweight-train`` in a subprocess, the
``reweight-eval`` / ``reweight-analyze`` / ``reweight-decode`` entry points in process), so a study
exercises exactly the tools it reports on. A killed study loses at most the step in flight: each tool
resumes within its step, and finished steps are skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reweight.cpu.patches import ROLLOUT_NAME
from reweight.io import write_json_atomic
from reweight.study.spec import BASELINE_ARM, PAIRED_SAMPLING_OVERRIDES, StudyInputError, StudySpec

LAUNCHERS = ("local", "ray", "slurm")
SEED_KEY = "seed"
SAVE_CONTENTS_KEY = "actor_rollout_ref.actor.checkpoint.save_contents"
FILE_LOGGER_ENV = "++ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH"


class StudyStepError(RuntimeError):
    """A step of the study failed; the message names the step and its log."""


@dataclass
class Run:
    """One training run: an arm at a seed, its overrides and where it writes."""

    arm: str
    seed: int
    overrides: list[str]
    root: Path
    total_steps: int

    @property
    def name(self) -> str:
        return f"{self.arm}/s{self.seed}"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"


@dataclass
class Step:
    key: str  # unique, file-name safe
    kind: str  # train | eval | support | analysis | decode
    label: str
    action: Callable[[], dict[str, Any] | None]


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def latest_step(checkpoints: Path) -> int:
    """The step of the newest verl checkpoint under ``checkpoints`` (0 if none), as verl's tracker file says."""
    from reweight.models import tracked_step

    return tracked_step(checkpoints) or 0


class Study:
    """A study in ``out``: :meth:`prepare` validates everything, :meth:`run` executes the plan."""

    def __init__(
        self,
        spec: StudySpec,
        out: str | os.PathLike,
        *,
        launch: str = "local",
        overwrite: bool = False,
        log: Callable[[str], None] = print,
        launch_options: dict[str, Any] | None = None,
        jobs: int = 1,
    ):
        if launch not in LAUNCHERS:
            raise StudyInputError(f"--launch {launch!r}: choose one of {list(LAUNCHERS)}")
        if not isinstance(jobs, int) or jobs < 1:
            raise StudyInputError(f"--jobs {jobs!r}: must be an integer >= 1")
        if jobs > 1 and launch == "slurm":
            raise StudyInputError(f"--jobs {jobs}: SLURM queues the runs itself; use --jobs 1 with --launch slurm")
        # absolute: every run's paths are handed to a training process that runs in its own directory
        self.spec, self.out, self.launch, self.overwrite, self.log = spec, Path(out).expanduser().resolve(), launch, overwrite, log
        self.launch_options = dict(launch_options or {})
        self.jobs = jobs  # training runs at once (not a setting of the results: not in study.json)
        self.runs: list[Run] = []
        self.base_model = ""
        self.test_data = ""
        self.max_new_tokens = 0

    # ------------------------------------------------------------------------------------ validation

    def _compose(self, overrides: Sequence[str], where: str):
        """Compose and pre-flight one training config as ``reweight-train --dry-run`` would."""
        from reweight.train import compose_config, prepare

        try:
            cfg = compose_config(self.spec.config_name, list(overrides))
            with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # verl's notes (e.g. "Disabled critic") would repeat per run
                prepare(cfg, dry_run=True)
        except Exception as err:  # Hydra, our checks and verl's validation all mean: this run cannot start
            root = err
            while root.__cause__ is not None:
                root = root.__cause__
            message = str(root) or str(err) or type(err).__name__
            raise StudyInputError(f"{where}: {message.splitlines()[0]}") from err
        return cfg

    def prepare(self, write: bool = True) -> None:
        """Check the settings, the output directory and every run's config; nothing is trained here.

        ``write``: record the settings in ``OUT/study.json`` (not for a dry run).
        """
        from omegaconf import OmegaConf

        spec = self.spec
        spec.check()
        self._check_out_dir()
        for arm, arm_overrides in spec.arms.items():
            overrides = [*spec.run_overrides(), *arm_overrides]
            if spec.train_steps is not None:
                overrides.append(f"trainer.total_training_steps={spec.train_steps}")
            cfg = self._compose([*overrides, f"{SEED_KEY}={spec.seeds[0]}"], f"arm {arm!r} (overrides {arm_overrides})")
            if spec.paired_sampling and str(cfg.actor_rollout_ref.rollout.name) == ROLLOUT_NAME:
                overrides.extend(PAIRED_SAMPLING_OVERRIDES)
            total = int(cfg.trainer.total_training_steps or 0)
            if total < 1:
                raise StudyInputError(f"arm {arm!r}: trainer.total_training_steps must be set (got {total})")
            loggers = OmegaConf.select(cfg, "trainer.logger", default=[]) or []
            loggers = [loggers] if isinstance(loggers, str) else list(loggers)
            if not self.base_model:
                self.base_model = str(cfg.actor_rollout_ref.model.path)
                self.max_new_tokens = int(spec.max_new_tokens or cfg.data.max_response_length)
                self.test_data = self._test_data(cfg)
            for seed in spec.seeds:
                root = self.out / "runs" / arm / f"s{seed}"
                run_overrides = [
                    *overrides,
                    f"{SEED_KEY}={seed}",
                    f"trainer.default_local_dir={root / 'checkpoints'}",
                    f"trainer.experiment_name={_slug(self.out.name)}-{arm}-s{seed}",
                    f"trainer.logger=[{','.join(dict.fromkeys([*loggers, 'file']))}]",
                    f"{FILE_LOGGER_ENV}={root / 'metrics.jsonl'}",
                ]
                if int(cfg.trainer.save_freq or 0) <= 0:  # the final model must be saved to be evaluated
                    run_overrides.append(f"trainer.save_freq={total}")
                contents = list(OmegaConf.select(cfg, SAVE_CONTENTS_KEY, default=[]) or [])
                if "hf_model" not in contents:  # full-precision HF weights (verl's merger would write bf16)
                    run_overrides.append(f"{SAVE_CONTENTS_KEY}=[{','.join([*contents, 'hf_model'])}]")
                self._compose(run_overrides, f"arm {arm!r} (seed {seed})")
                self.runs.append(Run(arm, seed, run_overrides, root, total))
        if write:
            self._write_settings()

    def _test_data(self, cfg) -> str:
        if self.spec.test_data:
            path = Path(self.spec.test_data).expanduser()
            if not path.is_file():
                raise StudyInputError(f"--test-data {self.spec.test_data!r} does not exist")
            from reweight.file_checks import data_file_problem

            # read only after every run has trained: a file reweight-eval cannot read is refused now
            problem = data_file_problem(path, ("prompt",), reader="reweight-eval")
            if problem:
                raise StudyInputError(f"--test-data {self.spec.test_data!r}: {problem}")
            return str(path)
        from reweight.embedded import cache_root

        val = Path(str(cfg.data.val_files))
        if cache_root() in val.parents and (val.parent / "test.parquet").is_file():
            return str(val.parent / "test.parquet")
        raise StudyInputError(
            f"config {self.spec.config_name!r} has no embedded test split: give the evaluation problems with --test-data"
        )

    def _settings(self) -> dict[str, Any]:
        return {"spec": self.spec.fingerprint(), "digest": self.spec.digest()}

    def _check_out_dir(self) -> None:
        path = self.out / "study.json"
        if not path.exists():
            return
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise StudyInputError(f"{path}: unreadable study settings ({err}); use --overwrite to start afresh") from err
        if old.get("digest") == self.spec.digest():
            return
        if not self.overwrite:
            changed = sorted(k for k, v in self.spec.fingerprint().items() if old.get("spec", {}).get(k) != v)
            raise StudyInputError(
                f"{self.out} holds a study with other settings (differ: {', '.join(changed) or 'format'}); "
                "use another --out, or --overwrite to discard its results"
            )
        for name in ("runs", "eval", "support", "prompts", "analysis", "decode", "logs", "steps", "slurm"):
            shutil.rmtree(self.out / name, ignore_errors=True)
        path.unlink()

    def _write_settings(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        settings = {
            **self._settings(), "launch": self.launch, "base_model": self.base_model, "test_data": self.test_data,
            "max_new_tokens": self.max_new_tokens,
            "runs": [{"arm": r.arm, "seed": r.seed, "overrides": r.overrides, "total_steps": r.total_steps} for r in self.runs],
        }
        write_json_atomic(self.out / "study.json", settings, indent=1)

    # ------------------------------------------------------------------------------------------ steps

    def model_of(self, run: Run) -> str:
        """The run's final model as an HF directory (exported from the verl checkpoint once, cached)."""
        from reweight.models import resolve_model_path

        return resolve_model_path(str(run.checkpoints))

    def eval_path(self, run: Run | None) -> Path:
        return self.out / "eval" / ("base.jsonl" if run is None else f"{run.arm}/s{run.seed}.jsonl")

    def steps(self) -> list[Step]:
        spec = self.spec
        steps = [Step(f"train_{r.arm}_s{r.seed}", "train", f"train {r.name}", lambda r=r: self.train(r)) for r in self.runs]
        steps.append(Step("eval_base", "eval", "evaluate base", lambda: self.evaluate(None)))
        steps += [Step(f"eval_{r.arm}_s{r.seed}", "eval", f"evaluate {r.name}", lambda r=r: self.evaluate(r)) for r in self.runs]
        steps += [Step(f"support_{r.arm}_s{r.seed}", "support", f"support {r.name}", lambda r=r: self.support(r)) for r in self.runs]
        # the three seed-level sections: one step per (section, arm, seed), each on its own slice of test prompts
        steps += [Step(f"analysis_{r.arm}_s{r.seed}", "analysis", f"direction analysis {r.name}", lambda r=r: self.analyse(r.arm, r.seed))
                  for r in self.runs]
        steps += [Step(f"decode_dapo_s{s}", "decode", f"replacement + extrapolation sweep, dapo/s{s}", lambda s=s: self.decode("dapo", BASELINE_ARM, s))
                  for s in spec.seeds]
        if len(spec.arms) > 1:
            steps += [Step(f"decode_best_s{s}", "decode", f"extrapolation sweep, best reweighted arm, s{s}", lambda s=s: self.decode("best", None, s))
                      for s in spec.seeds]
        return steps

    def _tool(self, key: str, main: Callable[[list[str]], int | None], argv: list[str]) -> None:
        """Run a CLI entry point in process with its output in ``logs/<key>.log``; raise if it fails."""
        log_path = self.out / "logs" / f"{key}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
            print(f"$ {' '.join(shlex.quote(a) for a in argv)}", flush=True)
            try:
                rc = main(argv)
            except SystemExit as e:  # argparse / parser.exit
                rc = e.code if isinstance(e.code, int) else 1
        if rc not in (0, None):
            tail = "".join(log_path.read_text().splitlines(keepends=True)[-5:])
            raise StudyStepError(f"step {key} failed (exit {rc}); log: {log_path}\n{tail}")

    def train(self, run: Run) -> dict[str, Any]:
        if latest_step(run.checkpoints) >= run.total_steps:
            return {"steps": run.total_steps, "note": "checkpoint already final"}
        run.root.mkdir(parents=True, exist_ok=True)
        if run.metrics.exists():  # verl's file logger truncates: keep an interrupted attempt's records
            k = len(list(run.root.glob("metrics.part*.jsonl")))
            run.metrics.rename(run.root / f"metrics.part{k}.jsonl")
        if self.launch == "local":
            self._train_local(run)
        else:
            self._train_cluster(run)
        got = latest_step(run.checkpoints)
        if got < run.total_steps:
            raise StudyStepError(f"train {run.name}: finished without a step-{run.total_steps} checkpoint (latest: {got}); log: {run.root / 'train.log'}")
        return {"steps": got}

    def train_command(self, run: Run) -> list[str]:
        cmd = [sys.executable, "-m", "reweight.train"]
        if self.spec.config_name != "embedded":
            cmd += ["--config-name", self.spec.config_name]
        return cmd + run.overrides

    def _train_local(self, run: Run) -> None:
        with open(run.root / "train.log", "a") as fh:
            fh.write(f"\n$ {shlex.join(self.train_command(run))}\n")
            fh.flush()
            proc = subprocess.run(self.train_command(run), stdout=fh, stderr=subprocess.STDOUT, cwd=run.root, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            tail = "".join((run.root / "train.log").read_text().splitlines(keepends=True)[-8:])
            raise StudyStepError(f"train {run.name} failed (exit {proc.returncode}); log: {run.root / 'train.log'}\n{tail}")

    def _train_cluster(self, run: Run) -> None:
        from reweight.study.cluster import train_on_cluster

        train_on_cluster(self, run, dry_run=False)

    def evaluate(self, run: Run | None) -> dict[str, Any]:
        from reweight.evaluation.cli import main

        spec = self.spec
        model = self.base_model if run is None else self.model_of(run)
        out = self.eval_path(run)
        out.parent.mkdir(parents=True, exist_ok=True)
        argv = [
            "sample", "--model", model, "--data", self.test_data, "--out", str(out), "--n", str(spec.n),
            "--temperature", str(spec.temperature), "--top-p", str(spec.top_p), "--max-new-tokens", str(self.max_new_tokens),
            "--scorer", spec.scorer, "--batch-size", str(max(64, spec.n)), "--seed", "0", "--no-progress",
        ]
        if spec.test_limit is not None:
            argv += ["--limit", str(spec.test_limit)]
        self._tool("eval_base" if run is None else f"eval_{run.arm}_s{run.seed}", main, argv)
        return {"results": str(out.relative_to(self.out))}

    def support(self, run: Run) -> dict[str, Any]:
        from reweight.evaluation.cli import main

        out = self.out / "support" / run.arm / f"s{run.seed}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        argv = [
            "support", "--base", self.base_model, "--rl", self.model_of(run),
            "--base-results", str(self.eval_path(None)), "--rl-results", str(self.eval_path(run)), "--out", str(out),
            "--no-progress",
        ]
        if self.spec.support_k is not None:
            argv += ["--k", str(self.spec.support_k)]
        self._tool(f"support_{run.arm}_s{run.seed}", main, argv)
        return {"support": str(out.relative_to(self.out))}

    def run_of(self, arm: str, seed: int) -> Run:
        return next(r for r in self.runs if r.arm == arm and r.seed == seed)

    def seed_prompts(self, total: int, seed: int) -> tuple[int, int]:
        """``(first, count)``: the test problems of one seed's analysis or decoding step.

        A section's prompt budget ``total`` (:class:`StudySpec` ``analysis_prompts`` / ``decode_prompts``) is
        split over the seeds: ``count = max(1, total // seeds)`` prompts each (at most the problems evaluated,
        ``test_limit`` or all), and the i-th seed of ``spec.seeds`` starts at problem ``i · count``, wrapping
        around: the seeds see different problems, together at most ``total`` of them (unless there are more
        seeds than ``total``), so the section costs about what one seed with ``total`` prompts cost.
        """
        import pyarrow.parquet as pq

        spec = self.spec
        available = pq.ParquetFile(self.test_data).metadata.num_rows
        if spec.test_limit is not None:
            available = min(available, spec.test_limit)
        count = min(available, max(1, total // len(spec.seeds)))
        return (spec.seeds.index(seed) * count) % available, count

    def _prompt_subset(self, total: int, seed: int) -> Path:
        """:meth:`seed_prompts` of the test data as a parquet (the direction analysis reads a whole file)."""
        import pandas as pd

        from reweight.io import write_parquet_atomic

        first, count = self.seed_prompts(total, seed)
        path = self.out / "prompts" / f"s{seed}_{first}_{count}.parquet"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            data = pd.read_parquet(self.test_data)
            if self.spec.test_limit is not None:
                data = data.head(self.spec.test_limit)
            rows = [(first + i) % len(data) for i in range(count)]
            write_parquet_atomic(path, data.iloc[rows].reset_index(drop=True))
        return path

    def analyse(self, arm: str, seed: int) -> dict[str, Any]:
        from reweight.analysis.cli import main

        spec = self.spec
        out = self.out / "analysis" / arm / f"s{seed}"
        prompts = self._prompt_subset(spec.analysis_prompts, seed)
        argv = [
            "--base", self.base_model, "--rl", self.model_of(self.run_of(arm, seed)),
            "--prompts", str(prompts), "--generate-with", "base,rl",
            "--samples-per-prompt", str(spec.analysis_samples), "--max-new-tokens", str(self.max_new_tokens),
            "--temperature", str(spec.temperature), "--num-workers", "1", "--out", str(out), "--no-progress",
            "--no-figure",  # the report draws Fig. 1b from all seeds' tokens
        ]
        self._tool(f"analysis_{arm}_s{seed}", main, argv)
        return {"arm": arm, "seed": seed, "analysis": str(out.relative_to(self.out)), "prompts": str(prompts.relative_to(self.out))}

    def avg_at_n(self, run: Run | None) -> float:
        """avg@n of a run's model (None: the base) on the study's test evaluation (``eval/``)."""
        from reweight.evaluation.records import read_results

        results = read_results(self.eval_path(run))[1]
        return sum(sum(p.correct) / p.n for p in results) / len(results)

    def best_reweighted_arm(self) -> str:
        """The non-baseline arm with the highest avg@n (mean over seeds), from the evaluation results."""

        def score(arm: str) -> float:
            accs = [self.avg_at_n(r) for r in self.runs if r.arm == arm]
            return sum(accs) / len(accs)

        return max((a for a in self.spec.arms if a != BASELINE_ARM), key=score)

    def decode(self, label: str, arm: str | None, seed: int) -> dict[str, Any]:
        """One seed's decoding sweep: ``dapo`` (the Fig. 1c τ grid and Fig. 4) or ``best`` (Fig. 4 only).

        Every dapo seed decodes the τ grid, so its curve is in report.json whatever it scores; the step records
        the seed's test avg@n and the base's, and whether it enters the recovery curve
        (:func:`reweight.study.report.rl_beats_base`).
        """
        from reweight.decoding.cli import main
        from reweight.study.report import rl_beats_base

        spec = self.spec
        arm = arm or self.best_reweighted_arm()
        run = self.run_of(arm, seed)
        out = self.out / "decode" / label / f"s{seed}"
        prompts = self._prompt_subset(spec.decode_prompts, seed)
        rl_avg, base_avg = self.avg_at_n(run), self.avg_at_n(None)
        replacement = label == "dapo"
        argv = [
            "sweep", "--base", self.base_model, "--rl", self.model_of(run), "--data", str(prompts),
            "--n", str(spec.decode_n), "--max-new-tokens", str(self.max_new_tokens),
            "--temperature", str(spec.temperature), "--top-p", str(spec.decode_top_p), "--out", str(out),
            "--extrapolate-tau", str(spec.extrapolate_tau), "--gammas", ",".join(str(g) for g in spec.gammas),
            "--no-progress",
        ]
        if replacement:  # the full replacement grid (Fig. 1c) on the DAPO model; Fig. 4 only on the best arm
            for criterion, taus in spec.grids.items():
                argv += ["--grid", f"{criterion}=" + ",".join(str(t) for t in taus)]
        else:
            argv += ["--grid", f"logp_diff={spec.extrapolate_tau}"]
        self._tool(f"decode_{label}_s{seed}", main, argv)
        return {
            "arm": arm, "seed": seed, "sweep": str(out.relative_to(self.out)), "prompts": str(prompts.relative_to(self.out)),
            "rl_avg_at_n": rl_avg, "base_avg_at_n": base_avg, "replacement_grid": replacement,
            "rl_beats_base": rl_beats_base(rl_avg, base_avg),
        }

    # -------------------------------------------------------------------------------------------- run

    def run(self, steps: Sequence[Step] | None = None) -> None:
        """Execute every unfinished step, one progress line per finished step, then the report.

        Training steps come first; with ``jobs`` > 1 (local launcher) up to ``jobs`` of them run at once, each
        in its own process. Every other step runs after them, in order, in this process.
        """
        from reweight.study.report import write_report

        steps = list(steps if steps is not None else self.steps())
        done_dir = self.out / "steps"
        done_dir.mkdir(parents=True, exist_ok=True)
        pending = [s for s in steps if not (done_dir / f"{s.key}.json").exists()]
        if len(pending) < len(steps):
            self.log(f"[study] {len(steps) - len(pending)} of {len(steps)} steps already done in {self.out}; resuming")
        self._t0, self._durations, self._finished = time.time(), {}, len(steps) - len(pending)
        trains = [s for s in pending if s.kind == "train"]
        rest = [s for s in pending if s.kind != "train"]
        if self.jobs > 1 and len(trains) > 1:
            self._run_parallel(trains, rest, len(steps))
        else:
            rest = pending
        for i, step in enumerate(rest):
            self._execute(step, rest[i + 1 :], len(steps))
        paths = write_report(self)
        self.log(f"[study] report: {paths['report.md']}")

    def _execute(self, step: Step, remaining: Sequence[Step], total: int) -> None:
        t = time.time()
        info = step.action() or {}
        self._record(step, info, time.time() - t, remaining, total)

    def _record(self, step: Step, info: dict[str, Any], took: float, remaining: Sequence[Step], total: int) -> None:
        write_json_atomic(self.out / "steps" / f"{step.key}.json", {"label": step.label, "seconds": round(took, 1), **info})
        self._durations.setdefault(step.kind, []).append(took)
        self._finished += 1
        self.log(
            f"[study] {self._finished}/{total} {step.label}: {_hms(took)} | "
            f"elapsed {_hms(time.time() - self._t0)} | left ~{self._eta(remaining, self._durations, self.jobs)}"
        )

    def _run_parallel(self, trains: list[Step], rest: list[Step], total: int) -> None:
        """Up to ``jobs`` training runs at once; the first failure stops new starts and is raised once the
        running ones have ended (their finished steps are recorded: a rerun resumes after them)."""
        from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

        def timed(step: Step) -> tuple[dict[str, Any], float]:
            t = time.time()
            return step.action() or {}, time.time() - t

        queue, running, error = list(trains), {}, None
        with ThreadPoolExecutor(self.jobs) as pool:
            while queue or running:
                while queue and len(running) < self.jobs and error is None:
                    step = queue.pop(0)
                    running[pool.submit(timed, step)] = step
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    step = running.pop(fut)
                    try:
                        info, took = fut.result()
                    except Exception as err:  # noqa: BLE001 -- re-raised below, after the running steps end
                        error = error or err
                        continue
                    self._record(step, info, took, [*queue, *running.values(), *rest], total)
        if error is not None:
            raise error

    @staticmethod
    def _eta(remaining: Sequence[Step], durations: dict[str, list[float]], jobs: int = 1) -> str:
        """Time left for the remaining steps of kinds already timed (training steps ``jobs`` at a time); the
        untimed kinds are named, not guessed."""
        if not remaining:
            return "0s"
        mean = {k: sum(v) / len(v) for k, v in durations.items()}
        total = sum(mean[s.kind] / (jobs if s.kind == "train" else 1) for s in remaining if s.kind in mean)
        untimed = sorted({s.kind for s in remaining} - set(mean))
        return _hms(total) + (f" + {', '.join(untimed)} (not yet timed)" if untimed else "")
