"""`seed=N` seeds everything verl seeds, the CPU rollout samples by it, and every documented example runs.

The documented examples are dry-run exactly as ``reweight-train --dry-run`` runs them (compose, then
``reweight.train.prepare(cfg, dry_run=True)``); each one's text is looked up in the file that documents
it, so editing a doc without keeping its example valid fails here.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from reweight.train import compose_config, prepare

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))
MODEL = ["actor_rollout_ref.model.path=/models/any"]


def _seed_keys(cfg: DictConfig, prefix: str = "") -> dict[str, object]:
    """Every key of the composed config named ``seed`` or ``*_seed`` (found by walking it, not listed)."""
    found = {}
    for key in cfg.keys():
        path = f"{prefix}.{key}" if prefix else str(key)
        node = cfg._get_node(key)
        if isinstance(node, DictConfig):
            found.update(_seed_keys(node, path))
        elif str(key) == "seed" or str(key).endswith("_seed"):
            found[path] = OmegaConf.select(cfg, str(key))
    return found


@pytest.mark.parametrize("name", PRESETS)
def test_seed_sets_every_seed_key_verl_reads(name):
    base = compose_config(name, MODEL if name in ("dapo", "dapo_reweight") else [])
    keys = _seed_keys(base)
    # the seeds verl 0.9.1 reads: data order, rollout sampling, mini-batch shuffling, FSDP workers
    for k in ["data.seed", "actor_rollout_ref.rollout.seed", "actor_rollout_ref.actor.data_loader_seed",
              "actor_rollout_ref.actor.fsdp_config.seed", "actor_rollout_ref.ref.fsdp_config.seed"]:
        assert k in keys
    assert all(v == base.seed for v in keys.values()), keys
    cfg = compose_config(name, (MODEL if name in ("dapo", "dapo_reweight") else []) + ["seed=7"])
    assert _seed_keys(cfg) == {k: 7 for k in keys}
    # and as verl's workers build their config objects
    from verl.utils.config import omega_conf_to_dataclass

    assert omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout).seed == 7
    assert omega_conf_to_dataclass(cfg.actor_rollout_ref.actor).data_loader_seed == 7


def test_seed_orders_the_training_data_through_verls_sampler():
    from verl.trainer.ppo.utils import create_rl_sampler

    data = list(range(50))

    def order(seed):
        return list(create_rl_sampler(compose_config("dapo", MODEL + [f"seed={seed}"]).data, data))

    assert order(3) == order(3)
    assert order(3) != order(4)


# ------------------------------------------------------------------------------ the CPU rollout


@pytest.fixture(scope="module")
def tiny_model_dir(tiny_tokenizer, tmp_path_factory):
    from reweight.tiny import build_model, save_tiny

    tok = tiny_tokenizer
    model = build_model(len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, seed=3)
    return str(save_tiny(tmp_path_factory.mktemp("seed") / "model", model, tok))


def _rollout_samples(model_dir: str, seed_override: str) -> list[list[int]]:
    """Samples of the hf rollout server built from the embedded preset's rollout config (as verl builds it)."""
    from transformers import AutoTokenizer
    from verl.utils.config import omega_conf_to_dataclass

    from reweight.cpu.rollout import HFRolloutServer

    cfg = compose_config("embedded", [seed_override, "actor_rollout_ref.rollout.prompt_length=32",
                                      "actor_rollout_ref.rollout.response_length=10"])
    rollout_cfg = omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout)
    server = HFRolloutServer(rollout_cfg, {"local_path": model_dir}, num_threads=1)
    tok = AutoTokenizer.from_pretrained(model_dir)
    prompts = [tok(f"Compute {i}*{i}.")["input_ids"] for i in range(4)]

    async def scenario():
        outs = []
        for i, p in enumerate(prompts):  # one at a time: the draw order is the request order
            outs.append(await server.generate(p, {"temperature": 1.0, "ignore_eos": True}, f"req-{i}"))
        return [list(o.token_ids) for o in outs]

    return asyncio.run(scenario())


def test_hf_rollout_samples_by_the_configured_seed(tiny_model_dir):
    first = _rollout_samples(tiny_model_dir, "seed=2")
    assert _rollout_samples(tiny_model_dir, "seed=2") == first
    assert _rollout_samples(tiny_model_dir, "seed=3") != first


# ------------------------------------------------------------------------------ documented examples


def _dry_run(config_name: str | None, overrides: list[str]) -> None:
    """``reweight-train --dry-run`` of an example, without the local file checks: the examples' data and
    models are made by ``reweight-prepare-data`` / the hub on the machine that trains, not here."""
    cfg = compose_config(config_name or "embedded", overrides)
    prepare(cfg, dry_run=True, local_paths=False)


def _sh_example(script: Path) -> tuple[str, list[str]]:
    """(config name, example overrides) of a recipe script: its `exec` line and its `e.g.` comment."""
    text = script.read_text()
    config_name = re.search(r"--config-name (\S+)", text).group(1)
    example = re.search(r"e\.g\. (.+?)\.?\n", text).group(1)
    overrides = [o for part in example.split(" or ") for o in part.split()]
    return config_name, [o.replace("...", "run1") for o in overrides]


@pytest.mark.parametrize("script", sorted((ROOT / "recipe").glob("run_*.sh")), ids=lambda p: p.name)
def test_recipe_script_examples_dry_run(script):
    config_name, overrides = _sh_example(script)
    assert any(o.startswith("seed=") for o in overrides)
    _dry_run(config_name, overrides)


def _recipe_readme_examples(doc: str = "recipe/README.md") -> list[tuple[str, list[str]]]:
    text = (ROOT / doc).read_text().replace("\\\n", " ")  # join continued lines
    runs = []
    for script, args in re.findall(r"bash recipe/(run_\S+\.sh)(.*)", text):
        config_name, _ = _sh_example(ROOT / "recipe" / script)
        runs.append((config_name, args.split()))
    for args in re.findall(r"reweight-train (--config-name \S+[^`\n]*)", text):
        words = [w for w in args.split() if w != "--dry-run"]
        runs.append((words[1], words[2:]))
    return runs


@pytest.mark.parametrize("doc,count", [("recipe/README.md", 3), ("docs/fidelity.md", 1)])
def test_recipe_readme_examples_dry_run(doc, count):
    runs = _recipe_readme_examples(doc)
    assert len(runs) >= count
    for config_name, overrides in runs:
        _dry_run(config_name, overrides)


def _doc_line(path: str, pattern: str) -> str:
    for line in (ROOT / path).read_text().splitlines():
        m = re.search(pattern, line)
        if m:
            return m.group(1)
    raise AssertionError(f"{path}: no line matches {pattern!r}")


@pytest.fixture
def small_embedded_assets(monkeypatch, tiny_model_dir, tmp_path):
    """The embedded:// assets as a tiny model and a few synthetic problems (building the real ones is an SFT run)."""
    import shutil

    from reweight import embedded
    root = tmp_path / "assets"
    shutil.copytree(tiny_model_dir, root / "model")
    embedded.write_data(root, embedded.Recipe())
    monkeypatch.setattr(embedded, "ensure_built", lambda recipe=None, log=print: root)
    return root


def test_sweep_examples_dry_run_every_point(small_embedded_assets):
    from reweight.launch.overrides import expand_sweep

    docs = [
        ("reweight/launch/cli.py", r"reweight-launch sweep .*?-- (.+seed=.+)$"),
        ("reweight/launch/overrides.py", r"^\s+(actor_rollout_ref\S+=\S+,\S+\s.*seed=.*)$"),
    ]
    for path, pattern in docs:
        points = expand_sweep(_doc_line(path, pattern).split())
        assert len(points) > 1
        for p in points:
            _dry_run(None, list(p.overrides))
    readme = (ROOT / "launch" / "README.md").read_text()
    block = re.search(r"reweight-launch sweep [^\n]*-- \\\n((?:.*\\\n)*.*\n)", readme).group(1)
    points = expand_sweep(block.replace("\\\n", " ").split())
    assert len(points) == 12
    for p in points:
        _dry_run(None, list(p.overrides))
