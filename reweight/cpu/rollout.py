"""Rollout ``hf``: a Hugging Face transformers generation server for verl's agent loop and trainer.

verl 0.9.1 generates only through vLLM / SGLang / TensorRT-LLM servers, none of which runs on a
CPU-only torch. This module implements the same three pieces for plain transformers:

- :class:`HFRolloutServer`, a Ray actor with the methods verl's agent loop and trainer call on a
  vLLM server: token-in/token-out ``generate`` (returns verl's ``TokenOutput`` with per-token
  log-probs and ``extra_fields["global_steps"]``), ``load_weights`` for the hybrid engine's weight
  sync, and the lifecycle calls (sleep / wake_up / KV-cache / abort / profiling) as no-ops;
  requests join one continuously batched decode (see :mod:`reweight.cpu.generation`);
- :class:`HFReplica`, the ``RolloutReplica`` verl's ``LLMServerManager`` creates per replica; it
  starts one server actor on the node of the replica's first training worker;
- :class:`HFServerAdapter`, the in-worker ``BaseRollout`` that ``engine_workers.update_weights``
  drives each step: every rank drains the weight generator (FSDP2 gathers are collective), the
  replica's rollout rank 0 sends the full state dict to its server.

Select it with ``actor_rollout_ref.rollout.name=hf`` (the CPU backend's patches register it).
The server runs on CUDA when its process sees a GPU, on CPU otherwise.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
import time
import zlib
from collections.abc import AsyncIterable, Iterable
from typing import Any, Optional

import ray
import torch

from reweight.cpu.generation import DecodeBatch, SamplingSpec

logger = logging.getLogger("reweight.cpu.rollout")

SERVER_NAME_PREFIX = "hf_"


def server_actor_name(replica_rank: int, node_rank: int = 0, suffix: str = "") -> str:
    return f"{SERVER_NAME_PREFIX}server_{replica_rank}_{node_rank}{suffix}"


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if cfg is None:
        return default
    if isinstance(cfg, dict):
        return cfg.get(key, default)
    try:
        return cfg.get(key, default)  # DictConfig / verl BaseConfig
    except Exception:
        return getattr(cfg, key, default)


def server_model_config(model_config: Any, path: str):
    """The transformers config the server builds its model from: the actor's, overrides included.

    verl's ``HFModelConfig`` carries ``hf_config`` -- the checkpoint's config with
    ``actor_rollout_ref.model.override_config`` applied, exactly what the FSDP actor builds its model
    from -- so actor and rollout cannot disagree (e.g. on ``max_position_embeddings``). For a plain
    mapping (tests), the same overrides are applied with verl's ``update_model_config``.
    """
    import copy

    hf_config = _get(model_config, "hf_config")
    if hf_config is not None:
        return copy.deepcopy(hf_config)
    from transformers import AutoConfig
    from verl.utils.model import update_model_config

    config = AutoConfig.from_pretrained(path, trust_remote_code=bool(_get(model_config, "trust_remote_code", False)))
    override = {k: v for k, v in dict(_get(model_config, "override_config", {}) or {}).items() if k != "attn_implementation"}
    update_model_config(config, override_config_kwargs=override)
    return config


_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


class HFRolloutServer:
    """The generation server (wrapped with ``ray.remote`` by :class:`HFReplica`).

    Args:
        config: verl ``RolloutConfig`` (prompt/response lengths, dtype, seed, logprobs_mode, ...).
        model_config: verl ``HFModelConfig`` (``local_path``, ``override_config``, tokenizer).
        replica_rank: index of the replica (seeds the sampler: ``config.seed + replica_rank``).
        num_threads: torch intra-op threads for this process (None: leave torch's default).
    """

    def __init__(self, config: Any, model_config: Any, replica_rank: int = 0, num_threads: Optional[int] = None):
        from transformers import AutoModelForCausalLM

        if num_threads:
            torch.set_num_threads(int(num_threads))
        self.config = config
        self.model_config = model_config
        self.replica_rank = replica_rank
        self.global_steps: Optional[int] = None
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dtype_name = str(_get(config, "dtype", "float32"))
        # CPU kernels are fp32 (and the actor recomputes log-probs in fp32 on CPU): stay there.
        self.dtype = torch.float32 if self.device.type == "cpu" else _DTYPES.get(dtype_name, torch.float32)
        path = _get(model_config, "local_path") or _get(model_config, "path")
        override = dict(_get(model_config, "override_config", {}) or {})
        attn = override.pop("attn_implementation", None) or "sdpa"
        self.model = AutoModelForCausalLM.from_pretrained(
            path,
            config=server_model_config(model_config, path),
            dtype=self.dtype,
            attn_implementation=attn,
            trust_remote_code=bool(_get(model_config, "trust_remote_code", False)),
        ).to(self.device)
        self.model.eval()
        self.tied = bool(getattr(self.model.config, "tie_word_embeddings", False))
        self.eos_token_ids = self._eos_ids(path)
        pad = getattr(self.model.config, "pad_token_id", None)
        self.pad_token_id = int(pad) if pad is not None else self.eos_token_ids[0]
        self.logprobs_mode = _get(config, "logprobs_mode", None) or "processed_logprobs"
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(_get(config, "seed", 42)) + int(replica_rank))
        self.prompt_length = int(_get(config, "prompt_length", 512))
        self.response_length = int(_get(config, "response_length", 512))
        max_model_len = _get(config, "max_model_len", None)
        self.max_model_len = int(max_model_len) if max_model_len else self.prompt_length + self.response_length
        self.max_num_seqs = int(_get(config, "max_num_seqs", 1024) or 1024)
        self.full_determinism = bool(_get(config, "full_determinism", False))
        self.seed = int(_get(config, "seed", 42))
        # engine_kwargs.hf.seed_by_prompt: see _prompt_seed
        self.seed_by_prompt = bool(_get(_get(_get(config, "engine_kwargs", None), "hf", None), "seed_by_prompt", False))
        self._prompt_counts: dict[bytes, int] = {}
        self._prompt_counts_step: Optional[int] = None
        self.batch = self._new_batch()
        # The engine thread owns self.batch; requests reach it through _inbox, under _cond.
        self._cond = threading.Condition()
        self._inbox: list[tuple[list[int], SamplingSpec, Optional[int], Any]] = []
        self._engine_lock = threading.Lock()  # held while decoding; load_weights takes it too
        self._engine = threading.Thread(target=self._engine_loop, name="hf-rollout-engine", daemon=True)
        self._engine.start()
        self.stats = {"requests": 0, "steps": 0, "weight_updates": 0, "max_batch": 0}

    def _eos_ids(self, path: str) -> list[int]:
        """The stop ids of :func:`reweight.models.eos_token_ids`: the tokenizer's EOS (when ``path`` has a
        tokenizer) and the model config's and generation config's."""
        from reweight.models import eos_token_ids, load_tokenizer

        try:
            tokenizer = load_tokenizer(path)
        except FileNotFoundError:  # a checkpoint without a tokenizer: the config's EOS ids only
            tokenizer = None
        try:
            return eos_token_ids(tokenizer, self.model, required=True)
        except ValueError as e:
            raise ValueError(f"hf rollout: {e} ({path})") from e

    def _new_batch(self) -> DecodeBatch:
        """An empty decode batch with this server's model, stop ids, padding, RNG and log-prob mode."""
        return DecodeBatch(
            self.model,
            eos_token_ids=self.eos_token_ids,
            pad_token_id=self.pad_token_id,
            generator=self.generator,
            logprobs_mode=self.logprobs_mode,
        )

    # ------------------------------------------------------------------ lifecycle
    async def ready(self) -> dict:
        return {"device": str(self.device), "dtype": str(self.dtype), "threads": torch.get_num_threads()}

    async def get_stats(self) -> dict:
        return dict(self.stats, forwards=self.batch.forwards)

    # ------------------------------------------------------------------ generation
    def _spec(self, prompt_len: int, sp: dict) -> SamplingSpec:
        sp = dict(sp or {})
        room = self.max_model_len - prompt_len
        if room < 1:
            raise ValueError(
                f"Prompt length ({prompt_len}) leaves no room to generate within max_model_len ({self.max_model_len})"
            )
        if "max_tokens" in sp:
            max_tokens = sp.pop("max_tokens")
        elif "max_new_tokens" in sp:
            max_tokens = sp.pop("max_new_tokens")
        else:
            max_tokens = min(self.response_length, self.prompt_length + self.response_length - prompt_len)
        max_tokens = max(1, min(int(max_tokens), room))
        temperature = float(sp.get("temperature", 1.0))
        top_k = sp.get("top_k", -1)
        top_p = sp.get("top_p", 1.0)
        rep = float(sp.get("repetition_penalty", 1.0) or 1.0)
        if rep != 1.0:
            raise ValueError(f"hf rollout: repetition_penalty={rep} is not supported (only 1.0)")
        return SamplingSpec(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=1.0 if top_p is None else float(top_p),
            top_k=-1 if top_k is None else int(top_k),
            ignore_eos=bool(sp.get("ignore_eos", _get(self.config, "ignore_eos", False))),
            logprobs=bool(sp.get("logprobs", False)),
            stop_token_ids=tuple(int(t) for t in (sp.get("stop_token_ids") or ())),
        )

    async def generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        request_id: str,
        image_data: Optional[list[Any]] = None,
        video_data: Optional[list[Any]] = None,
        audio_data: Optional[list[Any]] = None,
        mm_processor_kwargs: Optional[dict[str, Any]] = None,
        priority: int = 0,
        **kwargs: Any,
    ):
        """Token-in/token-out generation; the signature verl's ``LLMServerClient`` calls."""
        from verl.workers.rollout.replica import TokenOutput

        if image_data is not None or video_data is not None or audio_data is not None:
            raise NotImplementedError("hf rollout: multimodal inputs are not supported")
        prompt_ids = [int(t) for t in (prompt_ids.tolist() if hasattr(prompt_ids, "tolist") else prompt_ids)]
        spec = self._spec(len(prompt_ids), sampling_params)
        # Deterministic serving (rollout.full_determinism): each request draws from its own RNG
        # seeded by (seed, request_id) -- verl then passes stable ids ("det-<index>") -- so its
        # tokens do not depend on how requests were batched or routed.
        row_seed = (sampling_params or {}).get("seed")
        if row_seed is None and self.seed_by_prompt:
            row_seed = self._prompt_seed(prompt_ids)
        elif row_seed is None and self.full_determinism:
            row_seed = self.seed * 1_000_003 + zlib.crc32(str(request_id).encode())
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def done(result, fut=fut, loop=loop):
            loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(result))

        with self._cond:
            self._inbox.append((prompt_ids, spec, row_seed, done))
            self._cond.notify()
        result = await fut
        if isinstance(result, BaseException):
            raise RuntimeError(f"hf rollout engine failed: {result!r}") from result
        self.stats["requests"] += 1
        return TokenOutput(
            token_ids=result.token_ids,
            log_probs=result.log_probs if spec.logprobs else None,
            stop_reason="completed",
            num_preempted=0,
            extra_fields={"global_steps": self.global_steps, "finish_reason": result.finish_reason},
        )

    def _prompt_seed(self, prompt_ids: list[int]) -> int:
        """The RNG seed of a request under ``engine_kwargs.hf.seed_by_prompt``.

        It is a hash of (rollout seed, training step, prompt tokens, k), where k counts this step's
        earlier requests with the same prompt: the i-th sample of a prompt at a step draws the same
        random numbers in every run with the same seed, however requests are batched, routed or
        ordered. Two runs that differ only in their loss therefore sample with common random numbers:
        at step 1 (same weights) their rollouts are identical, and later a response changes only where
        the policies' probabilities have moved enough to change a draw. Within a run the streams are
        distinct (other step, prompt or k), so sampling is still independent across requests.
        """
        step = int(self.global_steps or 0)
        if step != self._prompt_counts_step:
            self._prompt_counts, self._prompt_counts_step = {}, step
        key = b",".join(str(t).encode() for t in prompt_ids)
        k = self._prompt_counts.get(key, 0)
        self._prompt_counts[key] = k + 1
        digest = hashlib.blake2b(f"{self.seed}:{step}:{k}:".encode() + key, digest_size=8).digest()
        return int.from_bytes(digest, "little") % (2**63)

    def _engine_loop(self) -> None:
        """Engine thread: admit queued requests into the running batch, decode one token, repeat."""
        waiting: list = []
        while True:
            with self._cond:
                while not self._inbox and len(self.batch) == 0:
                    self._cond.wait()
                new, self._inbox = self._inbox, []
            waiting.extend(new)
            with self._engine_lock:
                try:
                    room = max(0, self.max_num_seqs - len(self.batch))
                    admit, waiting = waiting[:room], waiting[room:]
                    for prompt, spec, seed, done in admit:
                        gen = None
                        if seed is not None:
                            gen = torch.Generator(device=self.device).manual_seed(int(seed) % (2**63))
                        self.batch.add(prompt, spec, generator=gen, on_done=done)
                    live = self.batch.step()
                    self.stats["steps"] += 1
                    self.stats["max_batch"] = max(self.stats["max_batch"], live)
                except BaseException as e:  # fail every request in flight, keep serving later ones
                    logger.exception("hf rollout engine step failed")
                    failed = self.batch.unfinished_callbacks() + [w[3] for w in waiting]
                    self.batch = self._new_batch()
                    waiting = []
                    for cb in failed:
                        if cb is not None:
                            cb(e)

    # ------------------------------------------------------------------ weights
    async def load_weights(self, named_tensors: dict[str, torch.Tensor], global_steps: Optional[int] = None) -> int:
        """Copy a full (HF-named) state dict into the model; every parameter must be present."""
        return await asyncio.to_thread(self._load_weights, named_tensors, global_steps)

    def _load_weights(self, named_tensors: dict[str, torch.Tensor], global_steps: Optional[int]) -> int:
        with self._engine_lock:
            params = dict(self.model.named_parameters())
            unknown = [n for n in named_tensors if n not in params and not (self.tied and n == "lm_head.weight")]
            if unknown:
                raise KeyError(f"hf rollout: weights for unknown parameters {unknown[:5]} (of {len(unknown)})")
            missing = [n for n in params if n not in named_tensors]
            if missing:
                raise KeyError(f"hf rollout: weight update lacks parameters {missing[:5]} (of {len(missing)})")
            with torch.no_grad():
                for name, tensor in named_tensors.items():
                    if name in params:
                        p = params[name]
                        if tuple(p.shape) != tuple(tensor.shape):
                            raise ValueError(f"hf rollout: {name} has shape {tuple(tensor.shape)}, model {tuple(p.shape)}")
                        p.copy_(tensor.to(device=p.device, dtype=p.dtype))
            self.stats["weight_updates"] += 1
        if global_steps is not None:
            self.global_steps = global_steps
        return len(named_tensors)

    async def set_global_steps(self, global_steps: int) -> None:
        self.global_steps = global_steps

    # ------------------------------------------------------------------ no-op lifecycle calls
    # Weights and the KV cache live in this process's memory; there is nothing to release or restore.
    async def wake_up(self, tags: Optional[list[str]] = None) -> None:
        return None

    async def sleep(self) -> None:
        return None

    async def clear_kv_cache(self) -> None:
        return None

    async def release_kv_cache(self) -> None:
        return None

    async def resume_kv_cache(self) -> None:
        return None

    async def wait_for_requests_to_drain(self) -> None:
        while self._inbox or len(self.batch):
            await asyncio.sleep(0.01)

    async def abort_all_requests(self, reset_prefix_cache: bool = True, reject_request: bool = False) -> dict:
        # Batches run to completion (no partial rollout): nothing is ever aborted.
        return {"aborted_count": 0, "request_ids": []}

    async def abort_request(self, request_id: str, reset_prefix_cache: bool = True) -> dict:
        return {"aborted": False, "request_id": request_id, "error": "hf rollout does not abort requests"}

    async def resume_generation(self) -> None:
        return None

    async def start_profile(self, **kwargs) -> None:
        return None

    async def stop_profile(self) -> None:
        return None


def _replica_base():
    from verl.workers.rollout.replica import RolloutReplica

    return RolloutReplica


class HFReplica(_replica_base()):
    """One ``hf`` rollout replica: a single :class:`HFRolloutServer` actor (tensor/data parallel
    sizes only decide how many training ranks share it; the server itself is one process)."""

    async def launch_servers(self):
        assert self.workers, "hf rollout: replica has no workers to colocate with"
        node_id = await self.workers[0].__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id())
        # one thread unless told otherwise: the server shares the cores with the agent loop, reward
        # and training processes, and contended torch thread pools are far slower than one thread
        num_threads = int(os.environ.get("REWEIGHT_HF_ROLLOUT_THREADS", "1"))
        if self.is_reward_model:
            name = server_actor_name(self.replica_rank, 0, f"_reward{self.name_suffix}")
        elif self.is_teacher_model:
            name = server_actor_name(self.replica_rank, 0, f"_teacher{self.name_suffix}")
        else:
            name = server_actor_name(self.replica_rank, 0, self.name_suffix)
        server_cls = ray.remote(HFRolloutServer)
        server = server_cls.options(
            name=name,
            num_cpus=0,
            max_concurrency=self.max_concurrency,
            scheduling_strategy=ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(
                node_id=node_id, soft=False
            ),
        ).remote(
            config=self.config,
            model_config=self.model_config,
            replica_rank=self.replica_rank,
            num_threads=num_threads,
        )
        info = await server.ready.remote()
        logger.info("hf rollout replica %d: server %s ready on %s", self.replica_rank, name, info)
        self.servers = [server]
        self._server_handle = server
        self._server_address = f"hf-rollout/{name}"



def _base_rollout():
    from verl.workers.rollout.base import BaseRollout

    return BaseRollout


class HFServerAdapter(_base_rollout()):
    """In-worker side of the ``hf`` rollout (hybrid engine): forwards weight updates to the server."""

    def __init__(self, config, model_config, device_mesh, replica_rank: int = -1):
        super().__init__(config, model_config, device_mesh)
        rank = int(os.environ.get("RANK", "0"))
        rollout_world_size = (
            self.config.tensor_model_parallel_size
            * self.config.data_parallel_size
            * self.config.pipeline_model_parallel_size
        )
        self.replica_rank = rank // rollout_world_size if replica_rank == -1 else replica_rank
        self.rollout_rank = rank % rollout_world_size
        self._has_server = self.rollout_rank == 0
        self.server_handle = None

    def _server(self):
        if self.server_handle is None:
            self.server_handle = ray.get_actor(server_actor_name(self.replica_rank, 0))
        return self.server_handle

    async def resume(self, tags: list[str]):
        return None

    async def release(self):
        return None

    async def update_weights(self, weights, global_steps: Optional[int] = None, wire_format: str = "named_tensors", **kwargs):
        if wire_format != "named_tensors":
            raise NotImplementedError(f"hf rollout: wire_format={wire_format!r} (only 'named_tensors')")
        start = time.time()
        # Every rank must drain the generator: FSDP2's full_tensor() is a collective.
        if hasattr(weights, "__aiter__"):
            state = await _drain_async(weights, keep=self._has_server)
        else:
            state = _drain(weights, keep=self._has_server)
        if self._has_server:
            await self._server().load_weights.remote(state, global_steps=global_steps)
            logger.info("hf rollout: %d tensors to replica %d in %.2fs", len(state), self.replica_rank, time.time() - start)

    def generate_sequences(self, prompts):
        raise NotImplementedError("hf rollout is server-mode only (verl's agent loop)")


@torch.no_grad()
def _drain(weights: Iterable, keep: bool) -> dict[str, torch.Tensor]:
    """Run the weight generator to its end with autograd off; ``keep``: a CPU copy of each ``(name, tensor)``.

    The generator does the gathering (e.g. verl's ``get_per_tensor_param``: FSDP2 ``full_tensor()``), so
    ``no_grad`` must hold while it runs: here, a plain function (a ``no_grad`` decorating an ``async def``
    would end before its body runs).
    """
    state: dict[str, torch.Tensor] = {}
    for name, tensor in weights:
        if keep:
            state[name] = tensor.detach().to("cpu", copy=True)
    return state


async def _drain_async(weights: AsyncIterable, keep: bool) -> dict[str, torch.Tensor]:
    """:func:`_drain` for an async generator. Grad mode is per thread, not per coroutine, so it is not
    switched off across the awaits (that would leak into whatever else the event loop runs); the copies
    are detached."""
    state: dict[str, torch.Tensor] = {}
    async for name, tensor in weights:
        if keep:
            state[name] = tensor.detach().to("cpu", copy=True)
    return state
