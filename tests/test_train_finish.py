"""The end of a run: a finished run is recognised before Ray starts, the summary reads verl's own
metrics file, and the dataloader workers verl keeps after training are shut down (no traceback at exit)."""

from __future__ import annotations

import json

import pytest

from reweight.train import compose_config


@pytest.fixture
def no_ray(monkeypatch):
    import ray

    import reweight.embedded

    def fail(*a, **k):
        raise AssertionError("started something expensive")

    monkeypatch.setattr(ray, "init", fail)
    monkeypatch.setattr(reweight.embedded, "ensure_built", fail)
    return ray


def _checkpoint(root, step):
    """A complete one-rank verl checkpoint (the pre-flight refuses a damaged one, reweight.file_checks)."""
    import torch

    actor = root / f"global_step_{step}" / "actor"
    actor.mkdir(parents=True)
    torch.save({}, actor / "model_world_size_1_rank_0.pt")
    (actor / "fsdp_config.json").write_text('{"FSDP_version": 2, "world_size": 1}')
    (root / "latest_checkpointed_iteration.txt").write_text(str(step))


def test_a_finished_run_says_so_and_how_to_go_on_without_ray(tmp_path, monkeypatch, capsys, no_ray):
    from reweight.train import main

    monkeypatch.chdir(tmp_path)
    _checkpoint(tmp_path / "run", 20)
    code = main([f"trainer.default_local_dir={tmp_path / 'run'}", "trainer.total_training_steps=20"])
    out = capsys.readouterr().out
    assert code == 0
    assert "nothing to train" in out and "step 20" in out
    assert "trainer.total_training_steps=M" in out and "trainer.resume_mode=disable" in out
    assert not no_ray.is_initialized()


@pytest.mark.parametrize(
    "saved, total, mode, expected",
    [(20, 20, "auto", 20), (25, 20, "auto", 25), (19, 20, "auto", None), (20, 20, "disable", None), (20, None, "auto", None)],
)
def test_completed_step_reads_verls_tracker(tmp_path, saved, total, mode, expected):
    from reweight.checks import completed_step

    _checkpoint(tmp_path, saved)
    cfg = compose_config("embedded", [f"trainer.default_local_dir={tmp_path}", f"trainer.total_training_steps={'null' if total is None else total}",
                                      f"trainer.resume_mode={mode}"])
    assert completed_step(cfg) == expected


def test_completed_step_ignores_a_tracker_without_its_checkpoint(tmp_path):
    from reweight.checks import completed_step

    (tmp_path / "latest_checkpointed_iteration.txt").write_text("20")  # verl would train from scratch
    cfg = compose_config("embedded", [f"trainer.default_local_dir={tmp_path}"])
    assert completed_step(cfg) is None


def test_summary_from_verls_file_logger(tmp_path):
    from reweight.train import summary, use_metrics_file

    run = tmp_path / "run"
    cfg = compose_config("embedded", [f"trainer.default_local_dir={run}", f"data.val_files={tmp_path / 'val.parquet'}"])
    path = use_metrics_file(cfg, "stamp")
    assert "file" in cfg.trainer.logger and path == str(run / "metrics-stamp.jsonl")
    assert cfg.ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH == path
    key = "val-core/synthetic/acc/mean@1"
    records = [
        {"step": 0, "data": {key: 0.17, "val-aux/synthetic/reward/mean@1": -0.6}},
        {"step": 1, "data": {"actor/pg_loss": 0.1}},
        {"step": 2, "data": {"actor/pg_loss": 0.2, key: 0.29}},
    ]
    with open(path, "w") as f:
        f.write("\n".join(json.dumps(r) for r in records) + "\n" + '{"step": 3, "da')  # a line cut by a kill
    _checkpoint(run, 2)
    text = summary(cfg, path, 125.4)
    assert "1..2 (2 trained in this run)" in text and "2 min 05 s" in text
    assert f"{key} 0.170 (step 0) -> 0.290 (step 2)" in text
    assert f"checkpoint:  {run / 'global_step_2'}" in text
    assert (f"reweight-eval sample --model {run / 'global_step_2'} --data {tmp_path / 'val.parquet'} "
            f"--out {run / 'eval' / 'global_step_2.jsonl'} --n 8") in text
    assert "direction:   no monitored step in this run (reweight.monitor.freq=10)" in text


def test_summary_says_where_the_direction_histograms_are(tmp_path):
    from reweight.train import summary

    run = tmp_path / "run"
    cfg = compose_config("embedded", [f"trainer.default_local_dir={run}", "reweight.monitor.freq=2"])
    path = tmp_path / "m.jsonl"
    rows = [{"step": s, "data": {"actor/pg_loss": 0.1, **({"direction/logp_diff_mean": 0.0} if s % 2 else {})}}
            for s in (1, 2, 3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert "direction:   Δlog p at steps 1,3 (direction/ in the metrics); histograms need W&B" in summary(cfg, path, 1.0)
    from omegaconf import open_dict

    with open_dict(cfg):
        cfg.trainer.logger = ["console", "wandb"]
        cfg.ray_kwargs.ray_init.runtime_env.env_vars = {"WANDB_RUN_ID": "abcd1234"}
    assert "histograms direction/hist/{logp_diff,prob,weight} in W&B run abcd1234" in summary(cfg, path, 1.0)


def test_release_dataloader_workers_stops_the_workers_verl_keeps():
    from torchdata.stateful_dataloader import StatefulDataLoader

    from reweight.train import release_dataloader_workers

    class Trainer:  # what verl's V1 trainer holds after fit: an unfinished epoch's iterator
        pass

    trainer = Trainer()
    trainer.train_dataloader_it = iter(StatefulDataLoader(list(range(64)), batch_size=2, num_workers=2))
    next(trainer.train_dataloader_it)
    workers = list(trainer.train_dataloader_it._workers)
    assert all(w.is_alive() for w in workers)
    release_dataloader_workers(trainer)
    assert trainer.train_dataloader_it is None
    assert not any(w.is_alive() for w in workers)
    release_dataloader_workers(trainer)  # idempotent


def test_step_lines_from_verls_metrics_file(tmp_path):
    import io

    from reweight.train import StepPrinter, step_line

    key = "val-core/synthetic_arith/acc/mean@1"
    assert step_line({"step": 0, "data": {key: 0.156}}, 20, None) == "[reweight-train] step 0: validation accuracy 0.156"
    assert step_line({"step": 0, "data": {"val-aux/x/reward/mean@1": 1.0}}, 20, None) is None
    rec = {"step": 2, "data": {"actor/pg_loss": 0.1, "critic/score/mean": -0.25, "actor/reweight/weight_mean": 1.0625,
                               "timing_s/step": 10.0}}
    assert step_line(rec, 20, 10.0) == "[reweight-train] step 2/20  reward -0.250  weight 1.062  10.0 s  ETA 3 min 00 s"
    rec["data"]["direction/logp_diff_mean"] = 0.01234  # a step the direction monitor measured
    assert step_line(rec, 20, 10.0) == (
        "[reweight-train] step 2/20  reward -0.250  weight 1.062  Δlogp +0.0123  10.0 s  ETA 3 min 00 s"
    )
    path = tmp_path / "m.jsonl"
    out = io.StringIO()
    printer = StepPrinter(str(path), 3, out, poll_s=0.01)
    printer.poll()  # no file yet: nothing
    rows = [{"step": 1, "data": {"actor/x": 1, "timing_s/step": 4.0}}, {"step": 2, "data": {"actor/x": 1, "timing_s/step": 2.0}}]
    path.write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[1])[:10])  # the second line is still being written
    printer.poll()
    assert out.getvalue() == "[reweight-train] step 1/3  4.0 s  ETA 0 min 08 s\n"
    path.write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[1]) + "\n")
    printer.poll()
    assert out.getvalue().splitlines()[1] == "[reweight-train] step 2/3  2.0 s  ETA 0 min 03 s"  # mean of 4 s and 2 s


def test_output_to_sends_file_descriptors_to_the_log(tmp_path, capfd):
    import os
    import subprocess

    from reweight.train import output_to

    log = tmp_path / "run" / "train.log"
    with output_to(str(log)) as console:
        os.write(1, b"to the log\n")  # (pytest swaps sys.stdout itself; the real console writes to fd 1)
        subprocess.run(["echo", "child to the log"], check=True)
        os.write(2, b"stderr to the log\n")
        print("to the console", file=console)
    print("after")
    assert log.read_text().splitlines() == ["to the log", "child to the log", "stderr to the log"]
    out = capfd.readouterr().out
    assert "to the console" in out and "after" in out and "to the log" not in out.replace("to the console", "")


def test_a_resumed_run_keeps_its_wandb_run_id(tmp_path, monkeypatch):
    """The id travels to wandb.init through the job's environment; a resume reuses it, a fresh start does not."""
    from omegaconf import OmegaConf

    from reweight.train import WANDB_ID_FILE, use_wandb_run_id

    monkeypatch.delenv("WANDB_RUN_ID", raising=False)

    def cfg(loggers, resume_mode="auto"):
        return OmegaConf.create({
            "trainer": {"logger": loggers, "default_local_dir": str(tmp_path / "run"), "resume_mode": resume_mode},
            "ray_kwargs": {"ray_init": {"runtime_env": {}}},
        })

    assert use_wandb_run_id(cfg(["console", "file"])) is None and not (tmp_path / "run").exists()
    first = cfg(["console", "wandb"])
    run_id = use_wandb_run_id(first)
    assert len(run_id) == 8 and (tmp_path / "run" / WANDB_ID_FILE).read_text().strip() == run_id
    env = first.ray_kwargs.ray_init.runtime_env.env_vars
    assert env.WANDB_RUN_ID == run_id and env.WANDB_RESUME == "allow"
    resumed = cfg(["console", "wandb"])
    assert use_wandb_run_id(resumed) == run_id  # the same W&B run: the curves continue
    fresh = use_wandb_run_id(cfg(["wandb"], resume_mode="disable"))
    assert fresh != run_id and (tmp_path / "run" / WANDB_ID_FILE).read_text().strip() == fresh
    monkeypatch.setenv("WANDB_RUN_ID", "mine1234")
    assert use_wandb_run_id(cfg(["wandb"])) == "mine1234"
