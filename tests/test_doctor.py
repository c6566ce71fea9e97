"""``reweight-launch doctor``: each check passes on a healthy fake node and fails on a broken one (no GPU, no Ray
needed: the checks are pure functions of the gathered facts); the command exits 0 only when all pass."""

from __future__ import annotations

import copy
import os

import pytest
from omegaconf import OmegaConf

from reweight.launch import doctor as dr
from reweight.launch.doctor import NodeFacts

GiB = 2**30
PINS = {"torch": "2.11.0", "vllm": "0.24.0", "transformers": "5.9.0", "verl": "0.9.1"}


def healthy(host="node0", gpus=8) -> NodeFacts:
    return NodeFacts(
        host=host, cuda_devices=["NVIDIA H100 80GB HBM3"] * gpus, driver="580.65.06", nccl="2.28.9",
        versions={"torch": "2.11.0+cu130", "vllm": "0.24.0", "transformers": "5.9.0", "verl": "0.9.1"},
        flash_attn=True, gpu_memory=[(78 * GiB, 80 * GiB)] * gpus, paths={"/ckpt": None, "/data/train.parquet": None},
        loss_registered=True, ray_gpus=float(gpus),
    )


@pytest.fixture(scope="module")
def preset():
    from reweight.train import compose_config

    return compose_config("qwen25_math_7b_reweight")  # 4 x 8 GPUs, Ulysses SP 4, gpu_memory_utilization 0.8


def test_stack_pins_are_verl_0_9_1s_vllm_extra_and_our_verl_pin():
    from importlib.metadata import requires

    pins = dr.stack_pins()
    assert pins["verl"] == "0.9.1"
    for name in ("torch", "vllm", "transformers"):  # each is an exact pin of verl's vllm extra
        assert f'{name}=={pins[name]}; extra == "vllm"' in requires("verl")


def test_cuda():
    assert dr.check_cuda([healthy()]).ok
    assert "driver 580.65.06, NCCL 2.28.9" in dr.check_cuda([healthy()]).detail
    bad = dr.check_cuda([healthy(), NodeFacts(host="cpu-node")])
    assert not bad.ok and "cpu-node" in bad.detail


def test_versions():
    assert dr.check_versions([healthy()], PINS).ok  # a local label (+cu130) matches its pin
    node = healthy("n1")
    node.versions["vllm"] = "0.25.0"
    node.versions["torch"] = None
    bad = dr.check_versions([healthy(), node], PINS)
    assert not bad.ok and "n1: vllm 0.25.0 (pinned 0.24.0)" in bad.detail and "n1: torch missing" in bad.detail


def test_attention(preset):
    assert dr.check_attention_backend([healthy(), healthy("n1")], preset).ok
    mixed = dr.check_attention_backend([healthy(), NodeFacts(host="n1", flash_attn=False)], preset)
    assert not mixed.ok and "some nodes only" in mixed.detail
    nowhere = [NodeFacts(host="n0"), NodeFacts(host="n1")]
    refused = dr.check_attention_backend(nowhere, preset)  # the preset's Ulysses SP needs flash-attn
    assert not refused.ok and refused.detail.startswith("actor_rollout_ref.actor.fsdp_config.ulysses_sequence_parallel_size=4")
    no_sp = copy.deepcopy(preset)
    OmegaConf.update(no_sp, "actor_rollout_ref.actor.fsdp_config.ulysses_sequence_parallel_size", 1)
    fallback = dr.check_attention_backend(nowhere, no_sp)
    assert fallback.ok and "sdpa" in fallback.detail
    assert OmegaConf.select(no_sp, "actor_rollout_ref.model.override_config.attn_implementation") is None  # not edited


def test_cluster():
    nodes = [healthy(f"n{i}") for i in range(4)]
    assert dr.check_cluster(nodes, 4, 8).ok
    nodes[2].ray_gpus = 4.0
    bad = dr.check_cluster(nodes, 4, 8)
    assert not bad.ok and "3 node(s) have 8 GPUs" in bad.detail and "n2: 4" in bad.detail
    assert not dr.check_cluster(nodes[:1], 2, 8).ok  # fewer nodes than trainer.nnodes


def test_loss():
    assert dr.check_loss([healthy(), healthy("n1")]).ok
    assert "in this process" in dr.check_loss([healthy()]).detail  # no Ray cluster: this node only
    workers = [healthy("n0"), healthy("n1")]
    for i, n in enumerate(workers):
        n.node_id = f"id{i}"
    assert "in a Ray worker on 2 node(s)" in dr.check_loss(workers).detail
    node = healthy("n1")
    node.loss_registered = False
    bad = dr.check_loss([healthy(), node])
    assert not bad.ok and "on n1" in bad.detail


def test_paths_gathered_on_a_node(tmp_path):
    data = tmp_path / "train.parquet"
    data.write_bytes(b"PAR1")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        wanted = {str(tmp_path / "ckpt" / "run"): True, str(data): False, str(tmp_path / "missing.parquet"): False}
        if os.geteuid() != 0:  # root writes anywhere
            wanted[str(locked / "ckpt")] = True
        facts = dr.gather_node_facts(wanted)
    finally:
        locked.chmod(0o700)
    assert facts.paths[str(tmp_path / "ckpt" / "run")] is None and facts.paths[str(data)] is None
    assert facts.paths[str(tmp_path / "missing.parquet")].startswith("not readable")
    if os.geteuid() != 0:
        assert facts.paths[str(locked / "ckpt")].startswith("not writable")
    assert not list(tmp_path.glob("**/.reweight-doctor-*"))  # the write probe cleans up
    node = NodeFacts(host="n1", paths=facts.paths)
    bad = dr.check_paths([healthy(), node])
    assert not bad.ok and f"n1: {tmp_path / 'missing.parquet'} not readable" in bad.detail
    assert dr.check_paths([healthy()], skipped=["hdfs://x"]).ok


def test_run_paths_are_the_checkpoint_and_data_files(preset):
    paths, skipped = dr.run_paths(preset)
    assert paths[str(preset.trainer.default_local_dir)] is True
    for f in (preset.data.train_files, *preset.data.val_files):
        assert paths.get(str(f)) is False or str(f) in skipped


def test_wandb(tmp_path):
    home = {"HOME": str(tmp_path)}
    assert dr.check_wandb(["console"], home).ok
    assert dr.check_wandb(["console", "wandb"], {**home, "WANDB_API_KEY": "k"}).ok
    assert dr.check_wandb(["wandb"], {**home, "WANDB_MODE": "offline"}).ok
    bad = dr.check_wandb(["console", "wandb"], home)
    assert not bad.ok and "WANDB_API_KEY" in bad.detail


def test_gpu_memory():
    assert dr.check_gpu_memory([healthy()], 0.8).ok
    node = healthy("n1")
    node.gpu_memory[3] = (40 * GiB, 80 * GiB)  # another process holds half of GPU 3
    bad = dr.check_gpu_memory([healthy(), node], 0.8)
    assert not bad.ok and "n1 GPU3: 40.0 of 80.0 GiB free" in bad.detail
    assert not dr.check_gpu_memory([NodeFacts(host="cpu")], 0.5).ok


def test_all_checks_on_a_healthy_cluster_pass_and_one_broken_node_fails_the_table(preset):
    env = {"WANDB_API_KEY": "k"}
    nodes = [healthy(f"n{i}") for i in range(4)]
    checks = dr.run_checks(preset, nodes, env, PINS)
    assert [c.name for c in checks] == ["cuda", "versions", "attention", "cluster", "loss", "paths", "wandb", "gpu_memory"]
    assert all(c.ok for c in checks), dr.format_table(checks)
    assert dr.format_table(checks).endswith("8/8 checks passed")
    nodes[3].loss_registered = False
    table = dr.format_table(dr.run_checks(preset, nodes, env, PINS))
    assert "loss        FAIL" in table and table.endswith("7/8 checks passed; failed: loss")


def test_the_cli_prints_the_table_and_exits_1_unless_all_pass(monkeypatch, capsys):
    """The real command gathers this machine's real facts: without a GPU it must fail cuda and gpu_memory; with
    one, cuda passes. Exit 1 exactly when a row of the table fails."""
    import torch

    from reweight.launch.cli import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    code = main(["doctor", "--", "trainer.total_training_steps=1"])
    out = capsys.readouterr().out
    assert "loss        ok" in out
    if torch.cuda.is_available():
        assert "cuda        ok" in out
    else:
        assert "cuda        FAIL" in out and "gpu_memory  FAIL" in out
    assert code == (1 if " FAIL" in out else 0)
