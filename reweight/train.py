"""``reweight-train``: verl's DAPO trainer with our configs, checks and loss.

    reweight-train                                   # the embedded default (configs/embedded.yaml)
    reweight-train --config-name qwen25_math_7b_reweight trainer.nnodes=4
    reweight-train --config-name dapo_reweight actor_rollout_ref.actor.policy_loss.alpha=0.1 ...
    reweight-train --dry-run ...                     # compose + check + validate, print, exit
    reweight-train --verbose ...                     # verl's full output on an interactive console too

On an interactive console the run prints one line per step and writes verl's and Ray's output to
``<trainer.default_local_dir>/train-<time>.log`` (elsewhere -- pipes, CI, SLURM, Ray jobs -- the full
output is printed, as with ``--verbose``); it ends with a summary (steps, wall time, validation
accuracy first -> last, the checkpoint, the command to evaluate it). Bad input is one line and exit
status 2 before Ray starts; a run whose checkpoint already reached ``total_training_steps`` says so.

The override syntax is Hydra's, exactly as for ``python -m verl.trainer.main_ppo``. The flow: compose
(``pkg://reweight.configs`` on top of verl's ``pkg://verl.trainer.config``) -> our checks
(:mod:`reweight.checks`) -> driver-side preparation -> verl's ``validate_config`` -> verl's
``run_ppo`` (Ray, the V1 trainer). Everything before ``run_ppo`` runs without Ray or a GPU.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from omegaconf import DictConfig, OmegaConf

CONFIG_MODULE = "reweight.configs"
CONFIG_PATH = "pkg://" + CONFIG_MODULE
DEFAULT_CONFIG = "embedded"
DRY_RUN_FLAG = "--dry-run"
VERBOSE_FLAG = "--verbose"
PROG = "reweight-train"


def compose_config(config_name: str = DEFAULT_CONFIG, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose a training config as ``reweight-train`` would, without running anything (tests, launchers)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base=None):
        return compose(config_name=config_name, overrides=list(overrides))


PLUGIN_MODULE = "reweight.plugin"


def require_plugin_in_workers(cfg: DictConfig) -> None:
    """Make every Ray worker import our plugin loudly.

    verl imports ``verl.plugins`` entry points but swallows their errors at DEBUG level; modules named in
    ``VERL_USE_EXTERNAL_MODULES`` it imports without a guard. Passing that variable through the job's
    runtime_env makes a worker on a node without verl-reweight fail at ``import verl`` with
    "No module named 'reweight'" (install verl-reweight there), and a broken install fail with its real
    traceback, instead of a late "Unsupported loss mode" or a silently different loss.

    A second mechanism on top of the entry point, kept because the entry point can fail silently (discovery
    off, swallowed import errors); this test in tests/test_configs.py shows both:
    ``test_the_entry_point_alone_can_fail_silently_and_the_external_modules_variable_cannot``.
    Which mechanism is relied on where: docs/architecture.md.
    """
    from omegaconf import open_dict

    env_vars = OmegaConf.select(cfg, "ray_kwargs.ray_init.runtime_env.env_vars", default=None)
    modules = [m for m in str((env_vars or {}).get("VERL_USE_EXTERNAL_MODULES", "") or "").split(",") if m]
    if PLUGIN_MODULE not in modules:
        modules.append(PLUGIN_MODULE)
    with open_dict(cfg):
        cfg.ray_kwargs.ray_init.runtime_env.setdefault("env_vars", {})
        cfg.ray_kwargs.ray_init.runtime_env.env_vars["VERL_USE_EXTERNAL_MODULES"] = ",".join(modules)


def targets_cpu(cfg: DictConfig) -> bool:
    """Whether the config is meant for verl's CPU platform (explicitly, or by its CPU-only HF rollout)."""
    import os

    from reweight.cpu.patches import ROLLOUT_NAME

    return (
        os.environ.get("VERL_PLATFORM", "").lower() == "cpu"
        or OmegaConf.select(cfg, "trainer.device") == "cpu"
        or OmegaConf.select(cfg, "actor_rollout_ref.rollout.name") == ROLLOUT_NAME
    )


class _environment_kept:  # noqa: N801 - a context manager used like a function
    """Restore ``os.environ`` on exit (a later dry run of a GPU config must not see our CPU settings)."""

    def __enter__(self):
        import os

        self.saved = dict(os.environ)

    def __exit__(self, *exc):
        import os

        os.environ.clear()
        os.environ.update(self.saved)
        return False


def check(cfg: DictConfig, local_paths: bool = True) -> None:
    """The cheap checks, before anything is built or started: ours, the V1 trainer, and (``local_paths``)
    the run's files on this machine (:func:`reweight.checks.check_paths`). Raises ``ValueError``s."""
    from reweight.checks import check_config, check_paths

    check_config(cfg)
    if not cfg.trainer.use_v1:
        raise ValueError("trainer.use_v1=False selects verl's deprecated V0 trainer, which verl-reweight does not support")
    if local_paths:
        check_paths(cfg)


def prepare(cfg: DictConfig, dry_run: bool = False, *, build_embedded: bool = True, local_paths: bool = True) -> None:
    """Check the config and prepare the driver; raises before Ray starts on bad input.

    A dry run validates a config for the platform it targets: a GPU config checked on a laptop is not
    held to the CPU backend's rules, which apply when the run itself would use the CPU platform.
    ``build_embedded=False`` leaves ``embedded://`` paths unbuilt (a launcher validating a job that will
    run elsewhere); ``local_paths=False`` skips the file checks (files that live on the cluster only).
    """
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config
    from verl.utils.device import auto_set_device

    check(cfg, local_paths=local_paths)
    if not dry_run:  # W&B without an account would fail only after Ray, the models and the first step
        import os

        from reweight.checks import check_wandb_credentials

        note = check_wandb_credentials(cfg.trainer.get("logger"), os.environ)
        if note:
            print(f"[reweight-train] {note}")
    require_plugin_in_workers(cfg)
    from reweight.cpu.resources import prepare_driver as prepare_cpu_backend
    from reweight.embedded import prepare as prepare_embedded

    if build_embedded:
        prepare_embedded(cfg)  # builds/caches the embedded:// model and data on first use
    if not dry_run:
        prepare_cpu_backend(cfg)  # CPU platform only: refuses what cannot run, sizes Ray / TransferQueue
    elif targets_cpu(cfg):
        with _environment_kept():  # it exports VERL_PLATFORM=cpu for the run; a dry run leaves no trace
            prepare_cpu_backend(cfg)
    auto_set_device(cfg)
    import warnings

    with warnings.catch_warnings():
        # verl warns that the critic is off whenever adv_estimator != gae: always so for DAPO (GRPO advantages),
        # so it says nothing about the user's config; every other warning of validate_config is shown
        warnings.filterwarnings("ignore", message="Disabled critic as algorithm.adv_estimator != gae")
        validate_config(config=cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))


# ------------------------------------------------------------------------------------------ finish


METRICS_ENV = "VERL_FILE_LOGGER_PATH"  # verl's `file` logger writes its jsonl here
RUNTIME_ENV_VARS = "ray_kwargs.ray_init.runtime_env.env_vars"


def already_done_message(cfg: DictConfig, step: int) -> str:
    """What to tell a user whose run's checkpoint already reached ``trainer.total_training_steps``."""
    total = int(cfg.trainer.total_training_steps)
    where = cfg.trainer.resume_from_path if cfg.trainer.resume_mode == "resume_path" else cfg.trainer.default_local_dir
    return (
        f"nothing to train: the checkpoint in {where} is at step {step} and trainer.total_training_steps={total}.\n"
        f"  to train further:  add trainer.total_training_steps=M (M > {step}) to the same command\n"
        f"  to start afresh:   add trainer.resume_mode=disable (overwrites), or choose a new "
        f"trainer.default_local_dir (by default it follows trainer.experiment_name)"
    )


def use_metrics_file(cfg: DictConfig, stamp: str) -> str:
    """Make verl's ``file`` logger write this run's metrics to a jsonl in the run directory; return its path.

    A ``VERL_FILE_LOGGER_PATH`` already in the Ray runtime_env's env_vars wins, then the environment's.
    The path travels in the config (the Ray runtime_env, and
    read back by :func:`task_runner_class`'s runner, which also covers a job joining an existing cluster).
    One file per launch (``metrics-<stamp>.jsonl``): verl opens it for writing, a resumed run would erase
    the previous one.
    """
    import os

    from omegaconf import open_dict

    path = (
        OmegaConf.select(cfg, f"{RUNTIME_ENV_VARS}.{METRICS_ENV}", default=None)
        or os.environ.get(METRICS_ENV)
        or os.path.join(os.path.abspath(os.path.expanduser(str(cfg.trainer.default_local_dir))), f"metrics-{stamp}.jsonl")
    )
    path = str(path)
    loggers = cfg.trainer.get("logger") or []
    loggers = [loggers] if isinstance(loggers, str) else list(loggers)
    with open_dict(cfg):
        if "file" not in loggers:
            cfg.trainer.logger = [*loggers, "file"]
        cfg.ray_kwargs.ray_init.runtime_env.setdefault("env_vars", {})
        cfg.ray_kwargs.ray_init.runtime_env.env_vars[METRICS_ENV] = path
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    return path


def release_dataloader_workers(trainer) -> None:
    """Stop the worker processes of the train dataloader iterator verl's trainer keeps after ``fit``.

    verl's V1 trainer holds ``train_dataloader_it`` (an unfinished epoch: its ``data.dataloader_num_workers``
    processes stay alive) in the TaskRunner actor after training. When the driver exits, Ray kills that
    actor's child processes first, and torch's SIGCHLD handler in the actor then raises "DataLoader worker
    (pid ...) is killed by signal: Killed." -- a traceback at the end of every successful run. Shutting the
    workers down when training has finished removes them (and torch's handler for them) cleanly.
    """
    it = getattr(trainer, "train_dataloader_it", None)
    if it is None:
        return
    shutdown = getattr(it, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
    trainer.train_dataloader_it = None


_RUNNER = None


def task_runner_class():
    """verl's ``TaskRunnerV1`` that also sets the metrics file and releases the dataloader workers at the end."""
    global _RUNNER
    if _RUNNER is None:
        import ray
        from verl.trainer.main_ppo import TaskRunnerV1

        base = TaskRunnerV1.__ray_actor_class__

        class ReweightTaskRunner(base):  # type: ignore[misc, valid-type]
            def run(self, config):
                import os

                path = OmegaConf.select(config, f"{RUNTIME_ENV_VARS}.{METRICS_ENV}", default=None)
                if path:
                    os.environ[METRICS_ENV] = str(path)
                from reweight.trainers import reweight_trainer

                try:
                    with reweight_trainer(config):  # verl's trainer + the direction monitor / paired refills, if on
                        return super().run(config)
                finally:
                    release_dataloader_workers(self.trainer)

        _RUNNER = ray.remote(ReweightTaskRunner)
    return _RUNNER


def read_metrics(path) -> list[dict]:
    """verl's ``file`` logger records, ``[{"step": int, "data": {key: value}}, ...]`` (missing file: [])."""
    import json

    records = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        records.append(json.loads(line))
                    except ValueError:  # a line cut by a kill
                        continue
    except OSError:
        return []
    return records


def validation_curve(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """``{metric: [(step, value), ...]}`` for verl's core validation accuracy (``val-core/<source>/acc|reward/mean@N``)."""
    import re

    pattern = re.compile(r"^val-core/.+/(acc|reward)/mean@\d+$")
    curves: dict[str, list[tuple[int, float]]] = {}
    for rec in records:
        for key, value in (rec.get("data") or {}).items():
            if pattern.match(key) and isinstance(value, (int, float)):
                curves.setdefault(key, []).append((int(rec["step"]), float(value)))
    acc = {k: v for k, v in curves.items() if "/acc/" in k}
    return acc or curves


def latest_checkpoint(cfg: DictConfig):
    """``<default_local_dir>/global_step_N`` of verl's tracker file, or None."""
    from pathlib import Path

    from reweight.models import tracked_step

    root = Path(str(cfg.trainer.default_local_dir)).expanduser().absolute()
    step = tracked_step(root)
    path = root / f"global_step_{step}"
    return path if step is not None and path.is_dir() else None


def summary(cfg: DictConfig, metrics_path, wall_s: float) -> str:
    """The end-of-run summary: steps, wall time, validation accuracy first -> last, checkpoint, eval command."""
    records = read_metrics(metrics_path)
    train_steps = sorted({int(r["step"]) for r in records if any(k.startswith("actor/") for k in (r.get("data") or {}))})
    minutes, seconds = divmod(int(round(wall_s)), 60)
    lines = ["[reweight-train] done."]
    if train_steps:
        lines.append(f"  steps:       {train_steps[0]}..{train_steps[-1]} ({len(train_steps)} trained in this run)")
    else:
        lines.append("  steps:       none trained in this run")
    lines.append(f"  wall time:   {minutes} min {seconds:02d} s")
    for key, curve in sorted(validation_curve(records).items()):
        first, last = curve[0], curve[-1]
        lines.append(f"  validation:  {key} {first[1]:.3f} (step {first[0]}) -> {last[1]:.3f} (step {last[0]})")
    lines.append(f"  metrics:     {metrics_path}")
    from reweight.monitor import histogram_note

    note = histogram_note(cfg, records)
    if note:
        lines.append(f"  direction:   {note}")
    ckpt = latest_checkpoint(cfg)
    if ckpt is None:
        lines.append(f"  checkpoint:  none in {cfg.trainer.default_local_dir} (trainer.save_freq={cfg.trainer.save_freq})")
        return "\n".join(lines)
    lines.append(f"  checkpoint:  {ckpt}")
    command = evaluation_command(cfg)
    if command:
        lines.append(f"  evaluate:    {command}")
    return "\n".join(lines)


def _prepare_run(cfg: DictConfig, dry_run: bool) -> str | None:
    """Everything before Ray: checks, the finished-run test, preparation, the dry run's print.

    Returns the metrics file when training should start, None when there is nothing to train.
    """
    import time

    from reweight.checks import completed_step

    check(cfg)
    from reweight.attention import check_attention

    if note := check_attention(cfg, cpu=targets_cpu(cfg)):  # flash-attn, else sdpa (or refused), on this machine
        print(f"[{PROG}] {note}", flush=True)
    step = completed_step(cfg)
    if step is not None:
        print(f"[{PROG}] {already_done_message(cfg, step)}", flush=True)
        return None
    prepare(cfg, dry_run=dry_run)
    if dry_run:
        print(OmegaConf.to_yaml(cfg, resolve=True))
        print(f"[{PROG}] dry run: config checked and validated; not starting Ray ({DRY_RUN_FLAG}).")
        return None
    use_wandb_run_id(cfg)
    return use_metrics_file(cfg, time.strftime("%Y%m%d-%H%M%S"))


WANDB_ID_FILE = "wandb_run_id.txt"


def use_wandb_run_id(cfg: DictConfig) -> str | None:
    """Keep one W&B run across resumes: the run id lives beside the checkpoints and reaches ``wandb.init``.

    verl calls ``wandb.init`` without an id, so a run resumed from its checkpoint would start a second
    W&B run and the curves would break in two (verl issue #2783). With ``wandb`` in ``trainer.logger``
    the id is read from ``<default_local_dir>/wandb_run_id.txt`` (written on the first launch, atomically)
    and passed as ``WANDB_RUN_ID`` with ``WANDB_RESUME=allow`` in the job's environment; wandb then
    appends to the same run. ``trainer.resume_mode=disable`` (start afresh) draws a new id. A
    ``WANDB_RUN_ID`` the user set (environment or runtime_env) wins. Returns the id, or None without W&B.
    """
    import os
    import secrets

    from omegaconf import open_dict

    from reweight.checks import uses_wandb
    from reweight.io import write_text_atomic

    if not uses_wandb(cfg.trainer.get("logger")):
        return None
    given = OmegaConf.select(cfg, f"{RUNTIME_ENV_VARS}.WANDB_RUN_ID", default=None) or os.environ.get("WANDB_RUN_ID")
    path = os.path.join(os.path.abspath(os.path.expanduser(str(cfg.trainer.default_local_dir))), WANDB_ID_FILE)
    run_id = str(given) if given else None
    if run_id is None and cfg.trainer.resume_mode != "disable" and os.path.isfile(path):
        run_id = open(path).read().strip() or None
    if run_id is None:
        run_id = secrets.token_hex(4)  # 8 lowercase hex characters, a valid W&B run id
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_text_atomic(path, run_id + "\n")
    with open_dict(cfg):
        cfg.ray_kwargs.ray_init.runtime_env.setdefault("env_vars", {})
        cfg.ray_kwargs.ray_init.runtime_env.env_vars["WANDB_RUN_ID"] = run_id
        cfg.ray_kwargs.ray_init.runtime_env.env_vars.setdefault("WANDB_RESUME", "allow")
    return run_id


def evaluation_command(cfg: DictConfig) -> str | None:
    """The ``reweight-eval sample`` command for the run's latest checkpoint on its validation data (None
    without a checkpoint or validation file): 8 samples per problem, up to ``data.max_response_length`` tokens.

    ``--model`` is the ``global_step_N`` directory itself: the evaluation tools read verl checkpoints
    directly (:mod:`reweight.models` exports the step to an HF model once).
    """
    import shlex

    step = latest_checkpoint(cfg)
    val = OmegaConf.select(cfg, "data.val_files")
    data = val if isinstance(val, str) or val is None else (list(val) or [None])[0]
    if step is None or not data:
        return None
    out = step.parent / "eval" / f"{step.name}.jsonl"
    command = ["reweight-eval", "sample", "--model", str(step), "--data", str(data), "--out", str(out), "--n", "8"]
    length = OmegaConf.select(cfg, "data.max_response_length")
    return shlex.join(command + (["--max-new-tokens", str(int(length))] if length else []))


def run(cfg: DictConfig, dry_run: bool = False) -> None:
    """Prepare, then train with verl's ``run_ppo`` (or print the resolved config if ``dry_run``).

    Bad input raises (a ``ValueError``, before Ray starts); :func:`main` turns it into one line. A run
    whose checkpoint already reached ``total_training_steps`` is reported and returns without Ray.
    """
    metrics_path = _prepare_run(cfg, dry_run)
    if metrics_path is not None:
        _train(cfg, metrics_path)


# ------------------------------------------------------------------------------------------ Ray start-up

# sysexits.h EX_TEMPFAIL: "a temporary failure; the user is invited to retry". Not 2: the input was fine.
EXIT_RAY_START = 75
RAY_START_ATTEMPTS = 2
# What Ray 2.x raises (ray/_private/node.py) when the node's raylet does not register with the GCS within its
# hard-coded 30 s (no setting changes it): on a loaded machine (a shared login node, a busy CI runner).
RAY_START_TIMEOUT = "timed out during startup"


class RayStartError(RuntimeError):
    """Ray could not start a local node (twice); the message is one line for the user."""


def _load() -> str:
    import os

    try:
        one, *_ = os.getloadavg()
    except OSError:
        return "load unknown"
    return f"load average {one:.1f} on {os.cpu_count() or 1} cores"


def _stop_partial_node(error: BaseException) -> None:
    """Stop the processes of the node whose start timed out (its GCS, raylet...): ``ray.init`` drops the node
    object without stopping them, and a retry beside them would compete for the same busy cores."""
    import traceback

    from ray._private.node import Node

    for frame, _ in traceback.walk_tb(error.__traceback__):
        node = frame.f_locals.get("self")
        if isinstance(node, Node):
            try:
                node.kill_all_processes(check_alive=False, allow_graceful=True)
            except Exception:  # best effort: Ray's reaper stops them when this process exits anyway
                pass
            return


def run_ppo_retrying_ray_start(cfg: DictConfig, note=None) -> None:
    """verl's ``run_ppo`` with our task runner; a local Ray node that times out at start-up is retried once.

    verl calls ``ray.init`` first thing in ``run_ppo`` (nothing else has happened when it fails, and Ray is
    not initialized), so calling ``run_ppo`` again is a clean retry with exactly verl's own init arguments.
    After a second timeout: :class:`RayStartError` (one line; :func:`main` exits with :data:`EXIT_RAY_START`).
    ``note``: where to say that it retries (default: stdout).
    """
    import ray
    from verl.trainer.main_ppo import run_ppo

    for attempt in range(1, RAY_START_ATTEMPTS + 1):
        try:
            return run_ppo(cfg, task_runner_class=task_runner_class())
        except Exception as e:
            if RAY_START_TIMEOUT not in str(e) or ray.is_initialized():
                raise
            _stop_partial_node(e)
            if attempt == RAY_START_ATTEMPTS:
                raise RayStartError(
                    f"Ray could not start its node on this machine: in {RAY_START_ATTEMPTS} tries the node did not register "
                    f"within Ray's fixed 30 s ({_load()}: the machine is too busy). Nothing was trained and no file "
                    f"was changed; rerun the same command when the load is lower, or start Ray yourself "
                    f"(ray start --head) and join it with ray_kwargs.ray_init.address=auto"
                ) from e
            print(f"[{PROG}] Ray's node did not register within Ray's 30 s ({_load()}); retrying once",
                  file=note or sys.stdout, flush=True)


def _train(cfg: DictConfig, metrics_path: str, verbose: bool = True) -> None:
    """verl's ``run_ppo`` with our task runner, then the summary (errors here are not bad input).

    Unless ``verbose``, verl's and Ray's output goes to ``<default_local_dir>/train-<time>.log`` and the
    console shows one line per step (:class:`StepPrinter`, from verl's metrics file).
    """
    import os
    import time

    t0 = time.time()
    if verbose:
        run_ppo_retrying_ray_start(cfg)
    else:
        log = os.path.join(os.path.abspath(os.path.expanduser(str(cfg.trainer.default_local_dir))),
                           f"train-{time.strftime('%Y%m%d-%H%M%S')}.log")
        print(f"[{PROG}] training; verl's full output goes to {log} ({VERBOSE_FLAG} shows it here)", flush=True)
        total = OmegaConf.select(cfg, "trainer.total_training_steps", default=None)
        try:
            with output_to(log) as console:
                printer = StepPrinter(metrics_path, total, console)
                printer.start()
                try:
                    run_ppo_retrying_ray_start(cfg, note=console)
                    _stop_ray()  # while the output still goes to the log: Ray streams workers' last lines late
                finally:
                    printer.stop()
        except RayStartError:
            raise  # one line from main(); nothing of verl's ran, the log holds only Ray's start-up
        except BaseException:
            print(f"[{PROG}] training failed; the last lines of {log}:", file=sys.stderr)
            print("".join(_tail(log, 40)), file=sys.stderr, flush=True)
            raise
    print(summary(cfg, metrics_path, time.time() - t0), flush=True)


def _stop_ray() -> None:
    """Shut down the Ray that ``run_ppo`` started (or joined), if it is still up.

    Ray forwards worker output to the driver asynchronously: lines a worker printed at the end (e.g. the
    last checkpoint's "Saved model ..." of a second rank) reached the console after the summary.
    """
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _tail(path: str, n: int) -> list[str]:
    try:
        with open(path, errors="replace") as f:
            return f.readlines()[-n:]
    except OSError:
        return []


class output_to:  # noqa: N801 - a context manager used like a function
    """Send this process's stdout and stderr (file descriptors 1 and 2, so also Ray's log streaming and
    child processes) to ``path``; yields a text stream to the original console."""

    def __init__(self, path: str):
        self.path = path

    def __enter__(self):
        import os

        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        self.saved = (os.dup(1), os.dup(2))
        self.console = os.fdopen(os.dup(self.saved[0]), "w", buffering=1)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        return self.console

    def __exit__(self, *exc):
        import os

        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self.saved[0], 1)
        os.dup2(self.saved[1], 2)
        for fd in self.saved:
            os.close(fd)
        self.console.close()
        return False


def step_line(record: dict, total: int | None, mean_step_s: float | None) -> str | None:
    """One console line for a record of verl's metrics file: step, reward, validation accuracy, mean token
    weight, mean Δlog p (monitored steps), step time, ETA; None for a record without a training step (e.g. the initial validation)."""
    import math

    data = record.get("data") or {}
    step = int(record.get("step", 0))
    val = {k: v for k, v in data.items() if k.startswith("val-core/") and "/acc/mean@" in k}
    if not any(k.startswith("actor/") for k in data):
        if val:
            return f"[{PROG}] step {step}: validation accuracy " + ", ".join(f"{v:.3f}" for v in val.values())
        return None
    parts = [f"step {step}" + (f"/{total}" if total else "")]
    if isinstance(data.get("critic/score/mean"), (int, float)):
        parts.append(f"reward {data['critic/score/mean']:+.3f}")
    if val:
        parts.append("val acc " + ",".join(f"{v:.3f}" for v in val.values()))
    if isinstance(data.get("actor/reweight/weight_mean"), (int, float)):
        parts.append(f"weight {data['actor/reweight/weight_mean']:.3f}")
    if isinstance(data.get("direction/logp_diff_mean"), (int, float)):  # monitored steps (reweight.monitor.freq)
        parts.append(f"Δlogp {data['direction/logp_diff_mean']:+.4f}")
    if isinstance(data.get("timing_s/step"), (int, float)):
        parts.append(f"{data['timing_s/step']:.1f} s")
    if total and mean_step_s and math.isfinite(mean_step_s) and step < total:
        eta = int(round((total - step) * mean_step_s))
        parts.append(f"ETA {eta // 60} min {eta % 60:02d} s")
    return f"[{PROG}] " + "  ".join(parts)


class StepPrinter:
    """Follows verl's metrics jsonl in a thread and prints :func:`step_line` for each new record."""

    def __init__(self, path: str, total: int | None, out, poll_s: float = 1.0):
        import threading

        self.path, self.total, self.out, self.poll_s = path, total, out, poll_s
        self.offset, self.pending, self.step_times = 0, "", []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reweight-step-printer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.poll()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.poll()

    def poll(self) -> None:
        import json

        try:
            with open(self.path) as f:
                f.seek(self.offset)
                chunk = f.read()
                self.offset = f.tell()
        except OSError:
            return
        self.pending += chunk
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            t = (record.get("data") or {}).get("timing_s/step")
            if isinstance(t, (int, float)):
                self.step_times.append(float(t))
            mean = sum(self.step_times) / len(self.step_times) if self.step_times else None
            text = step_line(record, self.total, mean)
            if text:
                print(text, file=self.out, flush=True)


def _hydra_args(args: Sequence[str]):
    """Hydra's own parse of ``args`` (``--config-name``, overrides, its flags)."""
    from hydra._internal.utils import get_args_parser

    return get_args_parser().parse_args(list(args))


def _plain(parsed) -> bool:
    """Only --config-name and overrides: the config can be composed (and checked) before Hydra's app runs."""
    flags = ("help", "hydra_help", "cfg", "multirun", "info", "shell_completion", "config_path", "config_dir",
             "experimental_rerun", "version", "resolve", "package")
    return not any(getattr(parsed, f, None) for f in flags)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: a Hydra app over our configs; ``--dry-run`` is ours, the rest is Hydra's.

    Bad input -- an override that does not compose, a failed check, a missing file -- is one line
    ``reweight-train: error: ...`` on stderr and exit status 2, before Ray starts
    (:mod:`reweight.cli_errors`; ``REWEIGHT_DEBUG=1`` adds the traceback). A local Ray node that does not
    start (twice; :func:`run_ppo_retrying_ray_start`) is one such line too, with exit status 75
    (:data:`EXIT_RAY_START`, sysexits' EX_TEMPFAIL: retry later).
    """
    import hydra

    from reweight.cli_errors import run_cli

    args = list(sys.argv[1:] if argv is None else argv)
    dry_run = DRY_RUN_FLAG in args
    # one line per step on an interactive console; full output with --verbose and wherever output is a
    # log already (pipes, CI, SLURM, Ray jobs)
    verbose = VERBOSE_FLAG in args or not sys.stdout.isatty()
    args = [a for a in args if a not in (DRY_RUN_FLAG, VERBOSE_FLAG)]

    parsed = _hydra_args(args)
    if _plain(parsed):  # Hydra's app would print a composition error as several lines and exit 1
        overrides = [o for o in parsed.overrides if not o.lstrip("+~").startswith("hydra.")]

        def _compose() -> None:
            compose_config(parsed.config_name or DEFAULT_CONFIG, overrides)

        code = run_cli(PROG, _compose)
        if code:
            return code

    @hydra.main(config_path=CONFIG_PATH, config_name=DEFAULT_CONFIG, version_base=None)
    def _app(cfg: DictConfig) -> None:
        prepared: list[str | None] = []
        code = run_cli(PROG, lambda: prepared.append(_prepare_run(cfg, dry_run)))
        if code:
            raise SystemExit(code)  # passes through Hydra's error reporting (it catches Exception only)
        if prepared[0] is not None:
            try:
                _train(cfg, prepared[0], verbose=verbose)  # not wrapped: a failure in training is not bad input
            except RayStartError as e:  # the machine, not the input: one line, its own exit status
                print(f"{PROG}: error: {e}", file=sys.stderr, flush=True)
                raise SystemExit(EXIT_RAY_START) from None

    saved = sys.argv
    sys.argv = [saved[0] if saved else PROG, *args]
    try:
        _app()
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    sys.exit(main())
