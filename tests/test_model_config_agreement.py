"""Actor and rollout build the same model config; pre-flight refuses configs where they could not.

A tiny local Qwen2 checkpoint with 4096 positions stands in for Qwen2.5-Math-7B. Each side's config is
built by the function that builds it in a run: verl's ``HFModelConfig`` for the FSDP actor, the ``hf``
rollout server's constructor, and for vLLM the ``engine_kwargs.vllm`` verl 0.9.1 hands to
``vllm serve`` (``hf_overrides`` applied to the checkpoint's config, as vLLM applies a dict).
"""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from reweight.checks import ConfigError, check_config
from reweight.train import compose_config

CHECKPOINT_POSITIONS = 4096


@pytest.fixture(scope="module")
def short_checkpoint(tiny_tokenizer, tmp_path_factory):
    from reweight.tiny import build_model, save_tiny

    tok = tiny_tokenizer
    model = build_model(len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                        max_position_embeddings=CHECKPOINT_POSITIONS, seed=4)
    return str(save_tiny(tmp_path_factory.mktemp("ckpt") / "model", model, tok))


def _actor_model_config(cfg):
    """The model config as verl's FSDP engine workers build it (overrides applied)."""
    from verl.utils.config import omega_conf_to_dataclass
    from verl.workers.config import HFModelConfig

    return omega_conf_to_dataclass(cfg.actor_rollout_ref.model, dataclass_type=HFModelConfig)


def _model_fields(config) -> dict:
    """The fields that define the model (not how it is run)."""
    d = config.to_dict()
    for k in ("_attn_implementation", "attn_implementation", "_attn_implementation_autoset", "transformers_version",
              "dtype", "torch_dtype", "bos_token_id", "eos_token_id", "pad_token_id", "_name_or_path"):
        d.pop(k, None)
    return d


def test_hf_rollout_builds_the_actors_model_config(short_checkpoint):
    from verl.utils.config import omega_conf_to_dataclass

    from reweight.cpu.rollout import HFRolloutServer

    cfg = compose_config("embedded", [f"actor_rollout_ref.model.path={short_checkpoint}",
                                      "+actor_rollout_ref.model.override_config.max_position_embeddings=32768",
                                      "+actor_rollout_ref.model.override_config.rope_theta=20000.0"])
    check_config(cfg)  # the hf rollout shares the actor's config: accepted
    actor = _actor_model_config(cfg)
    assert actor.hf_config.max_position_embeddings == 32768  # the override reached the actor
    server = HFRolloutServer(omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout), actor, num_threads=1)
    assert server.model.config.max_position_embeddings == 32768
    assert server.model.config.rope_theta == 20000.0
    assert _model_fields(server.model.config) == _model_fields(actor.hf_config)
    # and the positions table the rotary embedding is built for follows it
    rotary = server.model.model.rotary_emb
    assert rotary.max_seq_len_cached == 32768


def test_vllm_receives_the_actors_position_override(short_checkpoint):
    from transformers import AutoConfig
    from verl.utils.config import omega_conf_to_dataclass

    cfg = compose_config("qwen25_math_7b_reweight", [f"actor_rollout_ref.model.path={short_checkpoint}",
                                                     "+actor_rollout_ref.model.override_config.attn_implementation=sdpa"])
    check_config(cfg)
    actor = _actor_model_config(cfg)
    rollout = omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout)
    hf_overrides = rollout.engine_kwargs["vllm"]["hf_overrides"]
    assert type(hf_overrides) is dict  # verl json-dumps dicts into `vllm serve --hf_overrides`
    vllm_side = AutoConfig.from_pretrained(short_checkpoint)
    assert vllm_side.max_position_embeddings == CHECKPOINT_POSITIONS
    vllm_side.update(hf_overrides)
    assert _model_fields(vllm_side) == _model_fields(actor.hf_config)
    assert actor.hf_config.max_position_embeddings == 32768
    # a user changing the extension changes both sides
    cfg = compose_config("qwen25_math_7b_reweight", ["actor_rollout_ref.model.override_config.max_position_embeddings=16384"])
    check_config(cfg)
    assert omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout).engine_kwargs["vllm"]["hf_overrides"] == {
        "max_position_embeddings": 16384}


V = "actor_rollout_ref.rollout.engine_kwargs.vllm.hf_overrides"
O = "actor_rollout_ref.model.override_config"


@pytest.mark.parametrize(
    "overrides,match",
    [
        ([f"{V}.max_position_embeddings=8192"],
         rf"{O}\.max_position_embeddings=32768 but {V}\.max_position_embeddings=8192"),
        ([f"~{V}"], rf"{O}\.max_position_embeddings=32768 but {V}\.max_position_embeddings='<checkpoint>'"),
        ([f"+{V}.rope_theta=1e6"], rf"{O}\.rope_theta='<checkpoint>' but {V}\.rope_theta=1000000\.0"),
        (["actor_rollout_ref.rollout.name=sglang"], rf"{O}\.max_position_embeddings=32768 reaches the actor only"),
        ([f"{O}.max_position_embeddings=8192"],
         r"data\.max_prompt_length \+ data\.max_response_length = 2048 \+ 8192 = 10240 exceeds "
         rf"{O}\.max_position_embeddings = 8192"),
        (["actor_rollout_ref.rollout.max_model_len=40000"], r"rollout\.max_model_len=40000 exceeds"),
    ],
)
def test_preflight_refuses_disagreeing_model_configs_naming_the_keys(overrides, match):
    with pytest.raises(ConfigError, match=match):
        check_config(compose_config("qwen25_math_7b_dapo", overrides))


def test_preflight_reads_a_local_checkpoints_positions(short_checkpoint):
    # the 7B preset without its extension, on a local 4096-position checkpoint: 2048 + 8192 do not fit
    over = [f"actor_rollout_ref.model.path={short_checkpoint}", f"~{O}", f"~{V}"]
    with pytest.raises(ConfigError, match=rf"10240 exceeds max_position_embeddings of {short_checkpoint}/config.json = 4096"):
        check_config(compose_config("qwen25_math_7b_dapo", over))
    check_config(compose_config("qwen25_math_7b_dapo", over + ["data.max_response_length=2048"]))
    assert OmegaConf.select(compose_config("qwen25_math_7b_dapo", over), O) is None
