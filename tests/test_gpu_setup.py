"""The GPU set-up that can be checked without a GPU (docs/gpu.md): the Docker image on verl's vLLM image
agrees with the GPU lock, and the GPU smoke config passes ``reweight-train --dry-run``'s checks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_lock import GPU_LOCK, _pins

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "launch" / "docker" / "Dockerfile"


def _base_image() -> str:
    match = re.search(r"^ARG BASE_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.M)
    assert match and re.search(r"^FROM \$\{BASE_IMAGE\}$", DOCKERFILE.read_text(), re.M)
    return match.group(1)


def _labels() -> dict[str, str]:
    return dict(re.findall(r'io\.verl-reweight\.(\w+)="([^"]+)"', DOCKERFILE.read_text()))


def test_the_docker_image_and_the_gpu_lock_name_the_same_vllm_and_torch():
    image = _base_image()
    repo, tag = image.split("@")[0].split(":")
    assert repo == "verlai/verl"
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", image.split("@")[1]), "pinned by digest"
    vllm_tag = re.match(r"vllm(\d)(\d\d)\.", tag)
    assert vllm_tag, tag
    pins = _pins(GPU_LOCK.read_text(), "3.12")  # verl's images run Python 3.12
    vllm, torch = str(pins["vllm"]), str(pins["torch"])
    assert vllm.startswith(f"{int(vllm_tag.group(1))}.{int(vllm_tag.group(2))}."), (tag, vllm)  # vllm024 -> 0.24.x
    assert _labels() == {"vllm": vllm, "torch": torch}
    # the build asserts the image really has them (a label alone could drift)
    text = DOCKERFILE.read_text()
    assert f"torch.__version__.split('+')[0] == '{torch}'" in text and f"vllm.__version__.split('+')[0] == '{vllm}'" in text


def test_the_docker_build_installs_us_without_moving_the_image_stack():
    text = DOCKERFILE.read_text()
    installs = [i.strip() for i in re.findall(r"pip install[^\n&\\]*", text)]
    assert installs == ["pip install --no-cache-dir -c /tmp/image-stack.txt -e ."], installs
    frozen = re.search(r"grep -iE '\^\(([^)]*)\)", text).group(1).split("|")
    assert {"torch", "vllm", "triton"} <= set(frozen)  # pip may add packages but not replace these


@pytest.fixture
def no_flash_attn(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "flash_attn", None)


def test_the_gpu_smoke_config_dry_runs(no_flash_attn, tmp_path):
    """One GPU, vLLM rollout, our loss, 2 steps, sdpa: reweight-train --dry-run's checks and verl's
    validate_config (the embedded assets are built by the real run; the GPU test runs it)."""
    from verl.utils.config import omega_conf_to_dataclass

    from reweight.attention import check_attention
    from reweight.train import compose_config, prepare, targets_cpu

    cfg = compose_config("gpu_smoke", [f"trainer.default_local_dir={tmp_path / 'ckpt'}"])
    assert not targets_cpu(cfg)  # the CUDA path, not verl's CPU platform
    assert check_attention(cfg, cpu=False) is None  # sdpa already: nothing to pick or refuse without flash-attn
    prepare(cfg, dry_run=True, build_embedded=False)
    rollout = omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout)
    assert rollout.name == "vllm" and rollout.tensor_model_parallel_size == 1
    assert (cfg.trainer.nnodes, cfg.trainer.n_gpus_per_node, cfg.trainer.total_training_steps) == (1, 1, 2)
    assert cfg.actor_rollout_ref.actor.policy_loss.loss_mode == "reweight"
    assert cfg.actor_rollout_ref.model.override_config.attn_implementation == "sdpa"
    assert cfg.actor_rollout_ref.model.path == "embedded://model"  # the tiny model, built locally
