"""``reweight-launch`` against a real two-node Ray cluster on this machine (head + a second node process).

The cluster is brought up with our own ``ray-head`` / ``ray-worker`` commands (token auth with a private
token, a private ``--temp-dir``, free ports, 1 logical GPU per node) and torn down by signalling the two
``ray start --block`` processes we started (never ``ray stop``, which would stop every Ray on the machine).

Until the CPU backend lands, a submitted job runs ``reweight-train --dry-run`` (compose, our checks, verl's
``validate_config``) and then checks in a Ray worker on each node that loss_mode ``reweight`` is
registered; ``test_submit_runs_two_training_steps`` runs real training once it exists.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from conftest import E2E_TRAIN_OVERRIDES, e2e_asset_overrides, minimal_run_files
from test_launch_units import log_offline_runs

ALPHA = "actor_rollout_ref.actor.policy_loss.alpha"
CONFIG = "dapo_reweight"
# On a machine without a GPU, reweight-train checks the config for the CPU platform (reweight.cpu): FSDP2,
# the Hugging Face rollout, one node. The validation jobs below run with these.
CPU_OVERRIDES = [] if torch.cuda.is_available() else ["actor_rollout_ref.actor.strategy=fsdp2", "actor_rollout_ref.rollout.name=hf"]
ONE_NODE = ["trainer.nnodes=1", "trainer.n_gpus_per_node=1", *CPU_OVERRIDES]


def _files(tmp_path) -> list[str]:
    """A model dir, data files and an output dir that exist: reweight-train --dry-run checks them (this machine
    is every node here)."""
    return minimal_run_files(tmp_path)  # the pre-flight reads them: empty files are refused


def _launcher() -> list[str]:
    exe = shutil.which("reweight-launch")
    return [exe] if exe else [sys.executable, "-m", "reweight.launch.cli"]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@dataclass
class Cluster:
    address: str  # the dashboard (job API)
    gcs: str
    env: dict[str, str]
    temp_dir: str

    def launch(self, *args: str, timeout: float = 420, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([*_launcher(), *args], env=env or self.env, capture_output=True, text=True, timeout=timeout)

    def jobs(self) -> dict[str, dict]:
        """Every job of the cluster: status, metadata, runtime_env, logs (through Ray's job SDK)."""
        script = (
            "import json, sys\n"
            "from ray.job_submission import JobSubmissionClient\n"
            "c = JobSubmissionClient(sys.argv[1])\n"
            "out = {j.submission_id: {'status': str(j.status.value), 'metadata': j.metadata, 'runtime_env': j.runtime_env,\n"
            "       'entrypoint': j.entrypoint, 'logs': c.get_job_logs(j.submission_id)} for j in c.list_jobs() if j.submission_id}\n"
            "print(json.dumps(out))\n"
        )
        r = subprocess.run([sys.executable, "-c", script, self.address], env=self.env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout.strip().splitlines()[-1])


def _processes_using(marker: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


# What `ray start` prints when its node's raylet does not register with the GCS within Ray's fixed 30 s
# (ray/_private/node.py): on a loaded machine (the fresh-clone CI beside a study, load 10-30) every test here
# failed in this fixture with it. The fixture starts such a node once more, as reweight-train does.
RAY_START_TIMEOUT = "timed out during startup"


def _start_node(cmd: list[str], env: dict[str, str], log_path: Path, cluster: "Cluster", wait: list[str],
                temp_dir: str, head: bool) -> subprocess.Popen:
    """Start one `ray start --block` node and wait until ``wait-nodes <wait>`` sees it; a node whose start
    timed out (its process exits with Ray's message) is started once more, after its leftovers are stopped."""
    for attempt in (1, 2):
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        waiter = subprocess.Popen([*_launcher(), "wait-nodes", "--address", cluster.address, *wait, "--timeout", "240"],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        while waiter.poll() is None and proc.poll() is None:
            time.sleep(0.5)
        if proc.poll() is not None and waiter.poll() is None:  # the node gave up: no point waiting 240 s
            waiter.kill()
        out, err = waiter.communicate()
        if waiter.returncode == 0 and proc.poll() is None:
            return proc
        text = log_path.read_text()
        if attempt == 1 and proc.poll() is not None and RAY_START_TIMEOUT in text:
            leftovers = _processes_using(temp_dir) if head else []  # the timed-out head's GCS would hold its port
            for pid in leftovers:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:  # what the timed-out node started in its session (a late raylet would join as a third node)
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            continue
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        raise AssertionError(f"node did not come up (attempt {attempt}): {err[-2000:]}\n{text[-3000:]}")
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def ray_cluster():
    temp_dir = tempfile.mkdtemp(prefix="rwl", dir="/tmp")  # short: Ray's unix socket paths live under it
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "RAY_"))}
    # a private token (RAY_AUTH_TOKEN wins over ~/.ray/auth_token), W&B offline
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), WANDB_MODE="offline")
    gcs, dash, client, agent1, agent2, metrics1, metrics2 = _free_ports(7)
    # Logical resources: the embedded default trains 2 ranks on one node (2 GPU bundles there), and a CPU
    # run needs ~15 Ray CPU slots for its actors (reweight.cpu.resources); the second node has 1 GPU.
    node = ["--temp-dir", temp_dir, "--block"]
    head_cmd = [*_launcher(), "ray-head", "--port", str(gcs), "--node-ip", "127.0.0.1", "--dashboard-host", "127.0.0.1",
                "--dashboard-port", str(dash), "--ray-client-server-port", str(client),
                "--dashboard-agent-listen-port", str(agent1), "--metrics-export-port", str(metrics1), "--num-cpus", "16", "--num-gpus", "2", *node]
    worker_cmd = [*_launcher(), "ray-worker", "--address", f"127.0.0.1:{gcs}", "--node-ip", "127.0.0.1",
                  "--dashboard-agent-listen-port", str(agent2), "--metrics-export-port", str(metrics2), "--num-cpus", "4", "--num-gpus", "1", *node]
    cluster = Cluster(address=f"http://127.0.0.1:{dash}", gcs=f"127.0.0.1:{gcs}", env=env, temp_dir=temp_dir)
    started: list[subprocess.Popen] = []
    try:
        started.append(_start_node(head_cmd, env, Path(temp_dir) / "head.log", cluster, ["--nodes", "1"], temp_dir, head=True))
        started.append(_start_node(worker_cmd, env, Path(temp_dir) / "worker.log", cluster,
                                   ["--nodes", "2", "--gpus-per-node", "1"], temp_dir, head=False))
        yield cluster
    finally:
        for proc in reversed(started):  # `ray start --block` stops its node's processes on SIGTERM
            proc.send_signal(signal.SIGTERM)
        for proc in reversed(started):
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        for pid in _processes_using(temp_dir):  # anything of ours that outlived its node
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_submit_validates_config_and_registers_loss_in_a_worker_on_each_node(ray_cluster, tmp_path):
    r = ray_cluster.launch(
        "submit", "--address", ray_cluster.address, "--config-name", CONFIG, "--validate-only", "--probe-workers",
        "--ship-package", "--wait", "--timeout", "400", "--", *ONE_NODE, *_files(tmp_path), f"{ALPHA}=0.15",
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "[reweight-train] dry run: config checked and validated" in r.stdout
    assert "cannot stream the logs" not in r.stdout  # --wait streamed the job's logs as it ran
    assert "alpha: 0.15" in r.stdout
    # the probe ran a task on every alive node, not only on the job's one training node
    reports = json.loads(next(line for line in r.stdout.splitlines() if line.startswith("reweight-probe json="))[len("reweight-probe json="):])
    assert len({rep["node_id"] for rep in reports}) == 2
    assert all(rep["loss_registered"] and rep["setup_hook_ran"] for rep in reports)
    # --ship-package: the workers imported the copy Ray unpacked from the job's py_modules, not this checkout
    assert all(rep["reweight_file"].startswith(ray_cluster.temp_dir) for rep in reports), reports
    (job,) = [j for j in ray_cluster.jobs().values() if "reweight-launch probe --nodes 1" in j["entrypoint"]]
    assert job["status"] == "SUCCEEDED" and job["metadata"]["reweight.nnodes"] == "1"
    assert job["runtime_env"]["worker_process_setup_hook"] == "reweight.launch.worker_setup.register_reweight"
    assert job["runtime_env"]["env_vars"]["WANDB_MODE"] == "offline"


def test_sweep_submits_one_job_per_point_and_summary_reads_both(ray_cluster, tmp_path):
    r = ray_cluster.launch(
        "sweep", "--name", "s2", "--out-dir", str(tmp_path), "--address", ray_cluster.address, "--config-name", CONFIG,
        "--validate-only", "--wait", "--timeout", "400", "--",
        f"{ALPHA}=0.1,0.2", *ONE_NODE, *_files(tmp_path),
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "2/2 jobs succeeded" in r.stdout
    manifest = json.loads((tmp_path / "s2" / "manifest.json").read_text())
    points = manifest["points"]
    assert [p["values"] for p in points] == [{ALPHA: "0.1"}, {ALPHA: "0.2"}]
    ids = [p["job_id"] for p in points]
    assert len(set(ids)) == 2
    jobs = ray_cluster.jobs()
    wandb_dir = str((tmp_path / "s2").resolve())
    for p in points:
        job = jobs[p["job_id"]]  # its own Ray job: its own driver process and Ray session
        assert job["status"] == "SUCCEEDED"
        assert f"alpha: {p['values'][ALPHA]}" in job["logs"] and f"experiment_name: {p['experiment_name']}" in job["logs"]
        env = job["runtime_env"]["env_vars"]
        assert env["WANDB_RUN_GROUP"] == "s2" and env["WANDB_DIR"] == wandb_dir and env["WANDB_MODE"] == "offline"
        assert env["WANDB_TAGS"].split(",") == ["sweep:s2", f"alpha={p['values'][ALPHA]}"]
        assert job["metadata"]["reweight.experiment_name"] == p["experiment_name"]

    # The jobs only validated (no CPU trainer yet): log each point's W&B run with verl's Tracking logger,
    # in the environment its Ray job was given, then read the sweep back.
    log_offline_runs(
        [{"name": p["experiment_name"], "alpha": float(p["values"][ALPHA]), "env": jobs[p["job_id"]]["runtime_env"]["env_vars"]} for p in points]
    )
    s = ray_cluster.launch("summary", str(tmp_path / "s2" / "manifest.json"), "--format", "csv", timeout=180)
    assert s.returncode == 0, s.stderr
    lines = s.stdout.strip().splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, line.split(","), strict=True)) for line in lines[1:]]
    assert [row["alpha"] for row in rows] == ["0.1", "0.2"]
    assert [row["job_id"] for row in rows] == ids and {row["job_status"] for row in rows} == {"SUCCEEDED"}
    assert {row["wandb_state"] for row in rows} == {"finished"} and all(row["wandb_run"] != "(no run)" for row in rows)
    assert [row["actor/reweight/weight_mean"] for row in rows] == ["1.2", "1.4"] and [row["step"] for row in rows] == ["2", "2"]


def test_submit_refuses_a_job_larger_than_the_cluster(ray_cluster):
    r = ray_cluster.launch("submit", "--address", ray_cluster.address, "--config-name", CONFIG, "--", "trainer.nnodes=2", "trainer.n_gpus_per_node=8")
    assert r.returncode == 2
    assert "trainer.nnodes=2 x trainer.n_gpus_per_node=8" in r.stderr and "0 such node(s) among 2 alive" in r.stderr
    assert "3 GPU in all" in r.stderr and "(head): 2 GPU" in r.stderr
    assert not [j for j in ray_cluster.jobs().values() if "trainer.n_gpus_per_node=8" in j["entrypoint"]]


def test_submit_refuses_wandb_without_credentials_before_contacting_ray(tmp_path, monkeypatch, capsys):
    from reweight.launch.cli import main

    for k in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("HOME", str(tmp_path))
    (closed_port,) = _free_ports(1)
    assert main(["submit", "--address", f"http://127.0.0.1:{closed_port}", "--config-name", CONFIG, "--", "trainer.logger=[console,wandb]"]) == 2
    err = capsys.readouterr().err
    assert "trainer.logger=['console', 'wandb'] includes wandb" in err and "WANDB_API_KEY" in err and "WANDB_MODE=offline" in err
    assert "dashboard" not in err  # failed on W&B, before any cluster call
    monkeypatch.setenv("WANDB_MODE", "offline")  # the same command, offline: now it gets as far as the cluster
    assert main(["submit", "--address", f"http://127.0.0.1:{closed_port}", "--config-name", CONFIG, "--", "trainer.logger=[console,wandb]"]) == 2
    assert f"cannot read the Ray cluster's nodes from the dashboard at http://127.0.0.1:{closed_port}" in capsys.readouterr().err


@pytest.mark.e2e
def test_submit_runs_two_training_steps(ray_cluster, tmp_path, e2e_assets):
    """The embedded config, 2 real steps on CPU, submitted to the two-node cluster; W&B offline.

    It trains on the session's end-to-end assets (built once for every e2e test), not the embedded default's
    own, which a fresh machine would first have to build inside the job."""
    r = ray_cluster.launch(
        "submit", "--address", ray_cluster.address, "--wandb-dir", str(tmp_path), "--group", "e2e", "--wait", "--timeout", "540",
        "--", *e2e_asset_overrides(e2e_assets), *E2E_TRAIN_OVERRIDES,
        "trainer.total_training_steps=2", "trainer.logger=[console,wandb]", "trainer.experiment_name=e2e-2steps",
        # checkpoints in the test's own directory: a second run from the same checkout must train again, not find
        # the first run's step 2 in ./checkpoints and finish at once without a W&B run
        f"trainer.default_local_dir={tmp_path / 'ckpt'}",
        timeout=590,
    )
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    from reweight.launch.wandb_files import find_offline_runs

    (run,) = [run for run in find_offline_runs(tmp_path) if run.name == "e2e-2steps"]
    assert run.group == "e2e" and run.state == "finished"
    steps = [row for row in run.history if any(k.startswith("actor/reweight/") for k in row)]
    assert len(steps) == 2
    assert run.config_value("actor_rollout_ref.actor.policy_loss.loss_mode") == "reweight"
