"""reweight.launch without a cluster: sweep expansion, names and tags, the nodes x GPUs check, the W&B
credentials check, SLURM override rules, the offline W&B run reader, and the summary table."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from reweight.launch.cluster import ClusterError, NodeInfo, check_cluster_fits, head_start_command, worker_start_command
from reweight.launch.overrides import OverrideError, expand_sweep, explicit_value, short_names
from reweight.launch.slurm import SlurmError, slurm_training_overrides
from reweight.launch.summary import summarize, to_csv, to_markdown
from reweight.launch.sweep import SweepError, _new_manifest, plan_points, write_manifest
from reweight.launch.wandb_env import WandbCredentialsError, check_wandb_credentials, job_wandb_env
from reweight.launch.wandb_files import FULL, find_offline_runs, iter_record_bytes, read_offline_run

ALPHA = "actor_rollout_ref.actor.policy_loss.alpha"
SCHEME = "actor_rollout_ref.actor.policy_loss.scheme"


# ------------------------------------------------------------------------------------------ sweeps


def test_sweep_expands_hydra_grammar_as_a_cartesian_product_in_hydra_order():
    points = expand_sweep([f"{SCHEME}=none,low_prob", f"{ALPHA}=choice(0.1,0.2)", "seed=range(1,4)", "trainer.nnodes=2"])
    assert len(points) == 2 * 2 * 3
    # first swept key varies slowest (Hydra's BasicSweeper order), the fixed override rides along
    expected = [(s, a, str(r)) for s in ("none", "low_prob") for a in ("0.1", "0.2") for r in (1, 2, 3)]
    assert [(p.values[SCHEME], p.values[ALPHA], p.values["seed"]) for p in points] == expected
    assert [p.index for p in points] == list(range(12))
    for p in points:
        assert p.overrides == (f"{SCHEME}={p.values[SCHEME]}", f"{ALPHA}={p.values[ALPHA]}", f"seed={p.values['seed']}", "trainer.nnodes=2")


def test_sweep_keeps_prefixes_quotes_and_deletions():
    points = expand_sweep(["+extra.key=1,2", "trainer.experiment_name='a b'", "~trainer.val_before_train"])
    assert [p.overrides for p in points] == [
        ("+extra.key=1", "trainer.experiment_name='a b'", "~trainer.val_before_train"),
        ("+extra.key=2", "trainer.experiment_name='a b'", "~trainer.val_before_train"),
    ]
    assert points[0].values == {"extra.key": "1"}


def test_sweep_refuses_continuous_and_malformed():
    with pytest.raises(OverrideError, match="interval"):
        expand_sweep(["lr=interval(0,1)"])
    with pytest.raises(OverrideError, match="cannot parse the override 'a=b=c=\\('"):
        expand_sweep(["a=b=c=("])


def test_short_names_are_unique_suffixes():
    assert short_names([ALPHA, SCHEME, "seed"]) == {ALPHA: "alpha", SCHEME: "scheme", "seed": "seed"}
    assert short_names(["a.alpha", "b.alpha"]) == {"a.alpha": "a.alpha", "b.alpha": "b.alpha"}


def test_plan_points_names_tags_and_refusals():
    points = plan_points("scan", [f"{SCHEME}=none,low_prob", f"{ALPHA}=0.1", "seed=1,2"])
    assert [p.experiment_name for p in points] == [
        "scan-00-scheme_none-seed_1",
        "scan-01-scheme_none-seed_2",
        "scan-02-scheme_low_prob-seed_1",
        "scan-03-scheme_low_prob-seed_2",
    ]
    assert points[2].tags == ["sweep:scan", "scheme=low_prob", "seed=1"]
    assert points[2].overrides[-1] == "trainer.experiment_name=scan-02-scheme_low_prob-seed_1"
    # an explicit experiment name becomes the prefix and is not passed twice
    named = plan_points("scan", ["trainer.experiment_name=base", "seed=1,2"])
    assert [p.experiment_name for p in named] == ["base-00-seed_1", "base-01-seed_2"]
    assert sum(o.startswith("trainer.experiment_name=") for o in named[0].overrides) == 1
    with pytest.raises(SweepError, match="nothing is swept"):
        plan_points("scan", ["seed=1"])
    with pytest.raises(SweepError, match="sweep name"):
        plan_points("bad name", ["seed=1,2"])


def test_explicit_value():
    assert explicit_value(["trainer.nnodes=2", "+trainer.nnodes=3"], "trainer.nnodes") == "3"
    assert explicit_value(["a=1"], "trainer.nnodes") is None
    with pytest.raises(OverrideError, match="swept"):
        explicit_value(["trainer.nnodes=1,2"], "trainer.nnodes")


class _FakeBackend:
    """Stands in for the cluster / SLURM calls of a sweep: records submissions, answers job states."""

    def __init__(self, monkeypatch):
        from types import SimpleNamespace

        import reweight.launch.cluster as cluster
        import reweight.launch.slurm as slurm
        import reweight.launch.submit as submit
        import reweight.launch.sweep as sweep

        self.submitted: list[tuple[str, list[str]]] = []  # (submission/job id, overrides)
        self.states: dict[str, str | None] = {}
        self.planned: list[dict] = []

        def plan_job(overrides, **kw):
            self.planned.append({"overrides": list(overrides), **kw})
            return SimpleNamespace(overrides=list(overrides), nnodes=1, gpus_per_node=1, resource="GPU", project_name="proj")

        def submit_job(job, address, submission_id=None):
            self.submitted.append((submission_id, job.overrides))
            return submission_id

        def launch_slurm(spec, overrides, **kw):
            job_id = None if kw["dry_run"] else str(100 + len(self.submitted))
            self.submitted.append((job_id, list(overrides)))
            return SimpleNamespace(job_id=job_id, script_path=Path(kw["script_path"]), script="#!/bin/bash\n", command=["sbatch"], spec=spec)

        monkeypatch.setattr(submit, "plan_job", plan_job)
        monkeypatch.setattr(submit, "submit_job", submit_job)
        monkeypatch.setattr(submit, "job_status", lambda address, jid: self.states[jid])
        monkeypatch.setattr(cluster, "cluster_nodes", lambda address: [_node("10.0.0.1", 8, head=True)])
        monkeypatch.setattr(slurm, "launch_slurm", launch_slurm)
        monkeypatch.setattr(sweep, "slurm_job_state", lambda jid: self.states[jid])


SWEEP = [f"{ALPHA}=0.1,0.2,0.3"]
NO_WANDB_ENV = {"WANDB_MODE": "offline"}


def test_ray_sweep_writes_a_manifest_and_resume_resubmits_only_failed_points(tmp_path, monkeypatch):
    from reweight.launch.sweep import read_manifest, run_ray_sweep

    fake = _FakeBackend(monkeypatch)
    first = run_ray_sweep("s", SWEEP, address="10.0.0.1:8265", out_dir=tmp_path, environ=NO_WANDB_ENV)
    ids = [p["job_id"] for p in first["points"]]
    assert [sid for sid, _ in fake.submitted] == ids and len(set(ids)) == 3 and all(i.startswith("s-0") for i in ids)
    assert [o[-1] for _, o in fake.submitted] == [f"trainer.experiment_name=s-0{i}-alpha_0.{i + 1}" for i in range(3)]
    assert [kw["tags"] for kw in fake.planned][1] == ["sweep:s", "alpha=0.2"] and all(kw["group"] == "s" for kw in fake.planned)
    on_disk = read_manifest(tmp_path / "s")
    assert on_disk["backend"] == "ray" and on_disk["address"] == "http://10.0.0.1:8265" and on_disk["overrides"] == SWEEP
    assert on_disk["wandb"] == {"mode": "offline", "dir": str(tmp_path / "s"), "group": "s", "project": "proj", "entity": "", "base_url": ""}
    assert [p["job_id"] for p in on_disk["points"]] == ids
    with pytest.raises(SweepError, match="already has a manifest"):
        run_ray_sweep("s", SWEEP, address="10.0.0.1:8265", out_dir=tmp_path, environ=NO_WANDB_ENV)
    with pytest.raises(SweepError, match="different sweep"):
        run_ray_sweep("s", [f"{ALPHA}=0.1,0.2"], address="10.0.0.1:8265", out_dir=tmp_path, environ=NO_WANDB_ENV, resume=True)

    fake.states = {ids[0]: "SUCCEEDED", ids[1]: "FAILED", ids[2]: "RUNNING"}
    again = run_ray_sweep("s", SWEEP, address="10.0.0.1:8265", out_dir=tmp_path, environ=NO_WANDB_ENV, resume=True)
    assert len(fake.submitted) == 4 and fake.submitted[3][1][-1] == "trainer.experiment_name=s-01-alpha_0.2"
    points = read_manifest(again["path"])["points"]
    assert [p["job_id"] for p in points] == [ids[0], fake.submitted[3][0], ids[2]]
    assert points[1]["attempts"] == [{"job_id": ids[1], "status": "FAILED"}] and points[0]["attempts"] == []


def test_slurm_sweep_dry_run_writes_scripts_only_and_resume_resubmits_only_failed_jobs(tmp_path, monkeypatch):
    from reweight.launch.slurm import SlurmSpec
    from reweight.launch.sweep import manifest_path, read_manifest, run_slurm_sweep

    fake = _FakeBackend(monkeypatch)
    spec = SlurmSpec(nodes=2, gpus_per_node=4)
    dry = run_slurm_sweep("t", SWEEP, spec, out_dir=tmp_path, environ=NO_WANDB_ENV, dry_run=True)
    assert dry["dry_run"] and len(dry["launches"]) == 3 and not manifest_path(tmp_path, "t").exists()
    assert [launch.script_path.name for launch in dry["launches"]] == ["point-00.sbatch", "point-01.sbatch", "point-02.sbatch"]
    assert [launch.spec.job_name for launch in dry["launches"]] == ["t-00", "t-01", "t-02"]
    assert {"trainer.nnodes=2", "trainer.n_gpus_per_node=4"} <= set(fake.planned[0]["overrides"])  # checked as SLURM runs it
    assert all(kw["group"] == "t" for kw in fake.planned)

    fake.submitted.clear()
    first = run_slurm_sweep("t", SWEEP, spec, out_dir=tmp_path, environ=NO_WANDB_ENV)
    ids = [p["job_id"] for p in read_manifest(tmp_path / "t")["points"]]
    assert ids == ["100", "101", "102"] and first["backend"] == "slurm"
    assert read_manifest(tmp_path / "t")["wandb"]["dir"] == str(tmp_path / "t")
    assert read_manifest(tmp_path / "t")["points"][2]["script"] == str(tmp_path / "t" / "point-02.sbatch")
    with pytest.raises(SweepError, match="already has a manifest"):
        run_slurm_sweep("t", SWEEP, spec, out_dir=tmp_path, environ=NO_WANDB_ENV)

    fake.states = {"100": "COMPLETED", "101": "CANCELLED by 42", "102": None}  # None: no sacct
    run_slurm_sweep("t", SWEEP, spec, out_dir=tmp_path, environ=NO_WANDB_ENV, resume=True)
    points = read_manifest(tmp_path / "t")["points"]
    assert [p["job_id"] for p in points] == ["100", "103", "102"]
    assert points[1]["attempts"] == [{"job_id": "101", "status": "CANCELLED by 42"}]


def test_launch_cli_passes_every_flag_to_the_library(tmp_path, monkeypatch, capsys):
    """Each shared flag group reaches the library call of every subcommand that takes it, as written."""
    from types import SimpleNamespace

    import reweight.launch.slurm as slurm
    import reweight.launch.submit as submit
    import reweight.launch.sweep as sweep
    from reweight.launch.cli import main

    calls = {}

    def record(name, result):
        def f(*args, **kwargs):
            calls[name] = (args, kwargs)
            return result
        return f

    job = SimpleNamespace(notes=[], entrypoint="e", redacted_runtime_env=dict, nnodes=1, gpus_per_node=1, resource="GPU",
                          project_name="p", experiment_name="x")
    launch = SimpleNamespace(script="#!\n", script_path=tmp_path / "s", command=["sbatch"], job_id="7")
    monkeypatch.setattr(submit, "plan_job", record("plan_job", job))
    monkeypatch.setattr(submit, "check_job_fits", record("fits", None))
    monkeypatch.setattr(slurm, "launch_slurm", record("launch_slurm", launch))
    monkeypatch.setattr(sweep, "run_slurm_sweep", record("run_slurm_sweep", {"launches": [launch]}))
    monkeypatch.setattr(sweep, "run_ray_sweep", record("run_ray_sweep", {"path": "m"}))
    run = ["--config-name", "c", "--wandb-dir", "/w", "--ship-package", "--check-paths"]
    expect_run = {"config_name": "c", "wandb_dir": "/w", "ship_package": True, "check_paths": True}

    assert main(["submit", *run, "--group", "g", "--tag", "a", "--tag", "b", "--validate-only", "--dry-run", "--", "x=1"]) == 0
    assert calls["plan_job"] == ((["x=1"],), {**expect_run, "group": "g", "tags": ["a", "b"], "validate_only": True, "probe_workers": False})
    assert main(["slurm", "--nodes", "2", "--gpus-per-node", "4", *run, "--tag", "t", "--rollout-name", "hf", "--dry-run", "--", "y=2"]) == 0
    args, kwargs = calls["launch_slurm"]
    assert args[1] == ["y=2"] and (args[0].nodes, args[0].gpus_per_node, args[0].job_name) == (2, 4, "reweight")
    assert kwargs == {**expect_run, "group": None, "tags": ["t"], "rollout_name": "hf", "script_path": None,
                      "script_dir": "outputs/launch/slurm", "dry_run": True}
    assert main(["sweep", "--slurm", "--nodes", "2", "--gpus-per-node", "4", "--name", "n", "--out-dir", "/o", *run, "--resume",
                 "--dry-run", "--", "z=1,2"]) == 0
    args, kwargs = calls["run_slurm_sweep"]
    assert args[:2] == ("n", ["z=1,2"]) and args[2].job_name == "n"
    assert kwargs == {**expect_run, "out_dir": "/o", "resume": True, "out": sys.stdout, "rollout_name": None, "dry_run": True}
    assert main(["sweep", "--name", "n", "--address", "http://h:1", *run, "--probe-workers", "--", "z=1,2"]) == 0
    assert calls["run_ray_sweep"] == (("n", ["z=1,2"]), {**expect_run, "address": "http://h:1", "out_dir": "outputs/sweeps",
                                                          "resume": False, "out": sys.stdout, "validate_only": False, "probe_workers": True})


# ------------------------------------------------------------------------------------------ cluster


def _node(ip, gpus, head=False):
    return NodeInfo(node_id=ip, ip=ip, is_head=head, resources={"CPU": 8.0, "GPU": float(gpus)})


def test_cluster_fit_check():
    nodes = [_node("10.0.0.1", 8, head=True), _node("10.0.0.2", 8), _node("10.0.0.3", 4)]
    shape = "10.0.0.1 (head): 8 GPU; 10.0.0.2: 8 GPU; 10.0.0.3: 4 GPU"
    # fits, with a note naming what the job uses of the 20 GPUs (4 stay idle)
    assert check_cluster_fits(2, 8, nodes) == f"the job uses 2 x 8 GPU of the cluster's 20 ({shape})"
    assert check_cluster_fits(3, 4, nodes) == f"the job uses 3 x 4 GPU of the cluster's 20 ({shape})"
    assert check_cluster_fits(2, 8, nodes[:2]) is None  # the whole cluster: no note
    assert check_cluster_fits(1, 8, nodes[:1]) is None
    with pytest.raises(ClusterError) as e:
        check_cluster_fits(3, 8, nodes)
    msg = str(e.value)
    assert "trainer.nnodes=3 x trainer.n_gpus_per_node=8" in msg and "2 such node(s) among 3 alive" in msg
    assert "10.0.0.3: 4 GPU" in msg
    with pytest.raises(ClusterError, match="0 such node"):
        check_cluster_fits(1, 1, [NodeInfo("n", "10.0.0.9", True, {"CPU": 4.0})])
    with pytest.raises(ClusterError) as e:
        check_cluster_fits(0, 8, nodes)
    assert str(e.value) == "trainer.nnodes=0 and trainer.n_gpus_per_node=8 must both be at least 1"


def test_ray_start_commands():
    head = head_start_command(port=6400, num_cpus=16, num_gpus=8, dashboard_port=8300, block=True)
    assert head[:3] == ["ray", "start", "--head"]
    assert {"--port=6400", "--num-cpus=16", "--num-gpus=8", "--include-dashboard=true", "--dashboard-port=8300", "--block"} <= set(head)
    worker = worker_start_command("10.0.0.1:6400", num_cpus=16, num_gpus=8)
    assert worker[:3] == ["ray", "start", "--address=10.0.0.1:6400"] and "--head" not in worker and "--block" not in worker
    with pytest.raises(ValueError, match="GCS address"):
        worker_start_command("http://10.0.0.1:8265")


def _auth_mode_after_enable_client_auth(env):
    """RAY_AUTH_MODE in a fresh process after enable_client_auth() (Ray's switch changes process state)."""
    code = "import os; from reweight.launch.cluster import enable_client_auth; enable_client_auth(); print(os.environ.get('RAY_AUTH_MODE'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


def test_client_auth_switches_to_token_mode_exactly_when_a_token_is_available(tmp_path):
    from reweight.launch.cluster import ray_token_available

    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(tmp_path), PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    assert not ray_token_available(env) and _auth_mode_after_enable_client_auth(env) == "None"
    (tmp_path / "token").write_text("a" * 32)
    env["RAY_AUTH_TOKEN_PATH"] = str(tmp_path / "token")
    assert ray_token_available(env) and _auth_mode_after_enable_client_auth(env) == "token"


def test_client_auth_refuses_a_ray_without_its_token_switch(monkeypatch):
    import ray

    from reweight.launch.cluster import RAY_TOKEN_AUTH_SWITCH, enable_client_auth

    monkeypatch.setitem(sys.modules, RAY_TOKEN_AUTH_SWITCH.rpartition(".")[0], None)  # import fails: a Ray without it
    enable_client_auth({"RAY_AUTH_MODE": "disabled"})  # set explicitly: Ray's switch is not needed
    with pytest.raises(ClusterError, match=f"ray {ray.__version__} has no .*export RAY_AUTH_MODE"):
        enable_client_auth({})


# ------------------------------------------------------------------------------------------ W&B


def test_wandb_credentials_check(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    base = {"HOME": str(home)}
    with pytest.raises(WandbCredentialsError) as e:
        check_wandb_credentials(["console", "wandb"], base)
    assert "WANDB_API_KEY" in str(e.value) and "WANDB_MODE=offline" in str(e.value) and "trainer.logger" in str(e.value)
    with pytest.raises(WandbCredentialsError):
        check_wandb_credentials("tracking", {**base, "WANDB_MODE": "online"})
    for ok in ({"WANDB_MODE": "offline"}, {"WANDB_MODE": "disabled"}, {"WANDB_API_KEY": "x" * 40}, {"WANDB_DISABLED": "true"}):
        assert check_wandb_credentials(["wandb"], {**base, **ok}) is None
    assert check_wandb_credentials(["console"], base) is None
    # a ~/.netrc entry for the W&B host counts, with a note about the other nodes
    (home / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    note = check_wandb_credentials(["wandb"], base)
    assert note is not None and ".netrc" in note
    # ... but only for the host that WANDB_BASE_URL names
    with pytest.raises(WandbCredentialsError, match="wandb.example.org"):
        check_wandb_credentials(["wandb"], {**base, "WANDB_BASE_URL": "https://wandb.example.org"})


def test_job_wandb_env_forwards_only_wandb_settings(tmp_path):
    environ = {"WANDB_API_KEY": "k", "WANDB_ENTITY": "team", "WANDB_MODE": "offline", "WANDB_PROJECT": "p", "HOME": "/h", "SECRET": "s"}
    env = job_wandb_env(environ, group="g", tags=["sweep:g", "alpha=0.1", "x" * 80], wandb_dir=tmp_path)
    assert env["WANDB_API_KEY"] == "k" and env["WANDB_ENTITY"] == "team" and env["WANDB_MODE"] == "offline"
    assert "HOME" not in env and "SECRET" not in env
    assert env["WANDB_RUN_GROUP"] == "g" and env["WANDB_DIR"] == str(tmp_path.resolve())
    tags = env["WANDB_TAGS"].split(",")
    assert tags[:2] == ["sweep:g", "alpha=0.1"] and len(tags[2]) == 64


# ------------------------------------------------------------------------------------------ SLURM


def test_slurm_training_overrides():
    out = slurm_training_overrides(3, 8, ["a=1"])
    assert out == ["trainer.nnodes=3", "trainer.n_gpus_per_node=8", "actor_rollout_ref.rollout.name=vllm", "a=1"]
    # matching values are accepted (and not duplicated); the user's rollout name wins
    out = slurm_training_overrides(2, 4, ["trainer.nnodes=2", "actor_rollout_ref.rollout.name=sglang"])
    assert out == ["trainer.nnodes=2", "trainer.n_gpus_per_node=4", "actor_rollout_ref.rollout.name=sglang"]
    with pytest.raises(SlurmError, match="trainer.nnodes=4 contradicts --nodes 2"):
        slurm_training_overrides(2, 8, ["trainer.nnodes=4"])
    with pytest.raises(SlurmError, match="n_gpus_per_node=2 contradicts --gpus-per-node 8"):
        slurm_training_overrides(2, 8, ["trainer.n_gpus_per_node=2"])


# ------------------------------------------------------------------------------------------ offline W&B files

LOG_RUNS = r"""
import json, os, sys
from verl.utils.tracking import Tracking
for run in json.loads(sys.argv[1]):
    os.environ.update(run["env"])  # what the job's runtime_env gives the trainer's process
    name, alpha = run["name"], run["alpha"]
    config = {"trainer": {"project_name": "proj", "experiment_name": name},
              "actor_rollout_ref": {"actor": {"policy_loss": {"scheme": "low_prob", "alpha": alpha}}}}
    t = Tracking(project_name="proj", experiment_name=name, default_backend=["wandb"], config=config)
    for step in (1, 2):
        t.log({"actor/reweight/weight_mean": 1.0 + alpha * step, "actor/reweight/weight_max": 1.0 + alpha,
               "actor/pg_loss": -0.1 * step}, step=step)
    t.finish()
"""


def log_offline_runs(runs: list[dict]) -> None:
    """Log W&B offline runs with verl's own Tracking logger, as verl's trainer does: one process, one run
    after another; each run dict has ``name``, ``alpha`` and ``env`` (WANDB_DIR, WANDB_RUN_GROUP, ...)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_MODE="offline", WANDB_SILENT="true")
    for run in runs:
        Path(run["env"]["WANDB_DIR"]).mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", LOG_RUNS, json.dumps(runs)], env=env, check=True, timeout=600)


@pytest.fixture(scope="module")
def offline_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("wandb_offline")
    env = {"WANDB_DIR": str(root), "WANDB_RUN_GROUP": "g1", "WANDB_TAGS": "sweep:g1,alpha=x"}
    log_offline_runs([{"name": "run-a", "alpha": 0.1, "env": env}, {"name": "run-b", "alpha": 0.2, "env": env}])
    return root


def test_offline_run_files_hold_our_metrics_config_and_grouping(offline_runs):
    runs = {r.name: r for r in find_offline_runs(offline_runs)}
    assert set(runs) == {"run-a", "run-b"}
    b = runs["run-b"]
    assert b.project == "proj" and b.group == "g1" and b.tags == ["sweep:g1", "alpha=x"] and b.state == "finished"
    assert b.config_value("actor_rollout_ref.actor.policy_loss.alpha") == 0.2
    assert b.config_value("trainer.experiment_name") == "run-b"
    steps = [row for row in b.history if "actor/reweight/weight_mean" in row]
    assert [row["_step"] for row in steps] == [1, 2]
    assert [row["actor/reweight/weight_mean"] for row in steps] == pytest.approx([1.2, 1.4])
    assert b.last_values()["actor/reweight/weight_mean"] == pytest.approx(1.4)
    assert b.last_values()["actor/pg_loss"] == pytest.approx(-0.2)


def test_offline_reader_stops_at_a_torn_tail(offline_runs, tmp_path):
    src = next(offline_runs.glob("**/run-*.wandb"))
    data = src.read_bytes()
    whole = list(iter_record_bytes(src))
    torn = tmp_path / "run-torn.wandb"
    torn.write_bytes(data[:-5])
    assert list(iter_record_bytes(torn)) == whole[:-1]
    # a flipped byte inside the last record's payload fails its CRC: the scan ends before it
    flipped = bytearray(data)
    flipped[-2] ^= 0xFF
    torn.write_bytes(bytes(flipped))
    assert list(iter_record_bytes(torn)) == whole[:-1]
    # records spanning blocks (FIRST/MIDDLE/LAST) are reassembled: check the framing on the real file
    pos, kinds = 7, []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:
            pos += 32768 - pos % 32768
            continue
        crc, length, kind = struct.unpack_from("<IHB", data, pos)
        assert zlib.crc32(bytes([kind]) + data[pos + 7 : pos + 7 + length]) & 0xFFFFFFFF == crc
        kinds.append(kind)
        pos += 7 + length
    assert kinds.count(FULL) + kinds.count(4) == len(whole)
    assert read_offline_run(src).run_id


def test_summary_table_joins_manifest_and_offline_runs(offline_runs, tmp_path):
    points = plan_points("g1", [f"{ALPHA}=0.1,0.2,0.3"])
    for p, name in zip(points, ["run-a", "run-b", "run-c"], strict=True):
        p.experiment_name = name  # the names the offline runs above were logged under
    manifest = _new_manifest(
        "g1", "ray", None, [f"{ALPHA}=0.1,0.2,0.3"], points,
        address="http://127.0.0.1:9", wandb={"mode": "offline", "dir": str(offline_runs), "group": "g1", "project": "proj"},
    )
    path = tmp_path / "g1" / "manifest.json"
    write_manifest(path, manifest)
    columns, rows = summarize(path)
    assert columns[:8] == ["point", "alpha", "run_name", "job_id", "job_status", "wandb_run", "wandb_state", "step"]
    assert "actor/reweight/weight_mean" in columns and "actor/reweight/weight_max" in columns and "actor/pg_loss" in columns
    col = columns.index("actor/reweight/weight_mean")
    assert [r[1] for r in rows] == ["0.1", "0.2", "0.3"]
    assert [r[col] for r in rows] == ["1.2", "1.4", ""]
    assert [r[6] for r in rows] == ["finished", "finished", ""] and rows[2][5] == "(no run)"
    assert [r[4] for r in rows] == ["not submitted"] * 3
    md = to_markdown(columns, rows)
    assert md.splitlines()[0].startswith("| point | alpha |") and len(md.splitlines()) == 2 + 3
    csv_text = to_csv(columns, rows)
    assert csv_text.splitlines()[2].split(",")[col] == "1.4"
    assert json.loads(path.read_text())["points"][1]["experiment_name"] == "run-b"


def test_run_summary_reads_an_api_run_through_the_public_accessor(tmp_path, monkeypatch):
    """A real wandb.apis.public.Run (built offline from the attributes the API returns): the summary is the
    JSON the API sent; a changed API is refused, naming the installed wandb."""
    from types import SimpleNamespace

    import wandb
    from wandb.apis.public import Run

    from reweight.launch.summary import run_summary

    monkeypatch.setenv("WANDB_DIR", str(tmp_path))  # Run makes a scratch folder there
    sent = {"actor/reweight/weight_mean": 1.2, "_step": 3, "val/acc": {"mean": 0.5}}
    run = Run(None, "entity", "proj", "run1", attrs={"summaryMetrics": json.dumps(sent), "state": "finished"}, lazy=False)
    assert run_summary(run) == sent
    assert run_summary(SimpleNamespace(summary_metrics=sent)) == sent
    with pytest.raises(TypeError, match=f"wandb {wandb.__version__}: Run.summary_metrics is a list"):
        run_summary(SimpleNamespace(summary_metrics=[1, 2]))


class _FlakyJobClient:
    """Stands in for Ray's JobSubmissionClient: fails with ``errors`` in turn, then accepts the job."""

    def __init__(self, errors):
        self.errors, self.calls = list(errors), 0

    def submit_job(self, **kw):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return kw["submission_id"] or "raysubmit_1"


def _job():
    from types import SimpleNamespace

    return SimpleNamespace(entrypoint="reweight-train", runtime_env={}, metadata={})


def test_submit_retries_only_while_ray_has_no_job_agent_yet(monkeypatch):
    import io

    from reweight.launch import submit

    not_ready = RuntimeError("Request failed with status code 500: No available agent to submit job, please try again later..")
    sleeps: list[float] = []
    monkeypatch.setattr(submit.time, "sleep", sleeps.append)

    client = _FlakyJobClient([not_ready, not_ready])  # the agent registers after two refusals: submitted
    monkeypatch.setattr(submit, "_client", lambda address: client)
    out = io.StringIO()
    assert submit.submit_job(_job(), "http://127.0.0.1:8265", submission_id="s1", poll_s=2.0, out=out) == "s1"
    assert client.calls == 3 and sleeps == [2.0, 2.0]
    assert out.getvalue().count("\n") == 1 and "no job agent ready yet; retrying for up to 120 s" in out.getvalue()

    client = _FlakyJobClient([RuntimeError("Request failed with status code 400: bad runtime_env")])  # not transient
    monkeypatch.setattr(submit, "_client", lambda address: client)
    with pytest.raises(submit.SubmitError, match="submitting to http://127.0.0.1:8265 failed: .*bad runtime_env"):
        submit.submit_job(_job(), "http://127.0.0.1:8265", out=io.StringIO())
    assert client.calls == 1

    client = _FlakyJobClient([not_ready] * 100)  # the agent never comes: refused once the wait is spent
    monkeypatch.setattr(submit, "_client", lambda address: client)
    clock = iter(range(0, 10_000, 5))  # each look at the clock is 5 s later
    monkeypatch.setattr(submit.time, "monotonic", lambda: float(next(clock)))
    with pytest.raises(submit.SubmitError, match="No available agent"):
        submit.submit_job(_job(), "http://127.0.0.1:8265", agent_wait_s=30, poll_s=3, out=io.StringIO())
    assert 1 < client.calls < 10
