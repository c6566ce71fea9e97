"""token_metrics against a naive float64 full-materialisation reference; invariances; memory bound."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import reweight.analysis.metrics as metrics
from reweight.analysis import METRIC_NAMES, auto_chunk_size, compile_unavailable, token_metrics
from reweight.analysis.memory import peak_allocated_bytes
from reweight.analysis.metrics import DEFAULT_CHUNK_BYTES, chunk_metrics, fused_metrics
from reweight.tiny import build_model


def naive_reference(base, rl, seqs, prompt_lens, temperature=1.0, vocab_limit=None):
    """Per-sequence, unpadded, float64: full [T, V] logits from ``model(ids).logits``, then the textbook formulas.

    Returns one dict per sequence of ``(T,)`` float64 tensors (0 at prompt positions).
    """
    base64, rl64 = copy.deepcopy(base).double(), copy.deepcopy(rl).double()
    results = []
    for ids, p in zip(seqs, prompt_lens):
        x = torch.tensor([ids])
        lp = {}
        for key, m in (("base", base64), ("rl", rl64)):
            logits = m(input_ids=x).logits[0]  # (T, V) float64
            if vocab_limit is not None:
                logits = logits[:, :vocab_limit]
            lp[key] = torch.log_softmax(logits / temperature, -1)
        T = len(ids)
        res = {k: torch.zeros(T, dtype=torch.float64) for k in METRIC_NAMES}
        for t in range(p, T):
            lb, lr = lp["base"][t - 1], lp["rl"][t - 1]
            pb, pr = lb.exp(), lr.exp()
            res["logp_base"][t] = lb[ids[t]]
            res["logp_rl"][t] = lr[ids[t]]
            res["delta_logp"][t] = lr[ids[t]] - lb[ids[t]]
            res["entropy_base"][t] = -(pb * lb).sum()
            res["entropy_rl"][t] = -(pr * lr).sum()
            res["kl_rl_base"][t] = (pr * (lr - lb)).sum()
            res["kl_base_rl"][t] = (pb * (lb - lr)).sum()
        results.append(res)
    return results


def pad_batch(seqs, prompt_lens, side, pad_id=0):
    """(input_ids, attention_mask, response_mask, offsets) with padding on ``side``."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id)
    attn = torch.zeros((len(seqs), T), dtype=torch.long)
    resp = torch.zeros((len(seqs), T), dtype=torch.long)
    offsets = []
    for i, (s, p) in enumerate(zip(seqs, prompt_lens)):
        off = T - len(s) if side == "left" else 0
        ids[i, off : off + len(s)] = torch.tensor(s)
        attn[i, off : off + len(s)] = 1
        resp[i, off + p : off + len(s)] = 1
        offsets.append(off)
    return ids, attn, resp, offsets


def random_batch(vocab, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    lens = [9, 23, 14, 5][:n]
    prompt_lens = [3, 7, 1, 5][:n]  # the last one has an empty response
    seqs = [torch.randint(0, vocab, (L,), generator=g).tolist() for L in lens]
    return seqs, prompt_lens


def unpad(out, i, off, length):
    return {k: v[i, off : off + length] for k, v in out.items()}


# fp32 against float64: absolute where values are O(1), relative where they are large (entropies, log-probs).
TOL = dict(atol=1e-5, rtol=1e-6)
needs_compiler = pytest.mark.skipif(compile_unavailable("cpu") is not None, reason="torch.compile has no C++ compiler here")
COMPILED_AND_EAGER = [pytest.param(True, marks=needs_compiler, id="compiled"), pytest.param(False, id="eager")]


@pytest.mark.parametrize("compiled", COMPILED_AND_EAGER)
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_matches_float64_reference(tiny_pair, side, temperature, compiled):
    tok, base, rl = tiny_pair
    seqs, plens = random_batch(len(tok))
    ids, attn, resp, offs = pad_batch(seqs, plens, side, pad_id=tok.pad_token_id)
    out = token_metrics(
        base, rl, input_ids=ids, attention_mask=attn, response_mask=resp, temperature=temperature, chunk_size=5,
        compiled=compiled,
    )  # fmt: skip
    assert set(out) == set(METRIC_NAMES)
    ref = naive_reference(base, rl, seqs, plens, temperature)
    for i, (s, off) in enumerate(zip(seqs, offs)):
        got = unpad(out, i, off, len(s))
        for k in METRIC_NAMES:
            torch.testing.assert_close(got[k].double(), ref[i][k], **TOL, msg=f"{k} seq {i}")
    # outside the response everything is 0, including padding
    for k in METRIC_NAMES:
        assert (out[k][resp == 0] == 0).all()
    # the models differ, so the metrics are not trivially zero
    assert out["kl_rl_base"][resp == 1].min() > 0 and out["delta_logp"][resp == 1].abs().max() > 1e-3


def textbook_from_logits(logits_b, logits_r, targets, temperature):
    """The seven metrics from two ``(n, V)`` logit blocks, float64, written out directly: ``{name: (n,)}``."""
    lb = torch.log_softmax(logits_b.double() / temperature, -1)
    lr = torch.log_softmax(logits_r.double() / temperature, -1)
    pb, pr = lb.exp(), lr.exp()
    tb, tr = lb[torch.arange(len(targets)), targets], lr[torch.arange(len(targets)), targets]
    return {
        "logp_base": tb, "logp_rl": tr, "delta_logp": tr - tb,
        "entropy_base": -(pb * lb).sum(-1), "entropy_rl": -(pr * lr).sum(-1),
        "kl_rl_base": (pr * (lr - lb)).sum(-1), "kl_base_rl": (pb * (lb - lr)).sum(-1),
    }  # fmt: skip


@needs_compiler
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunk_math_on_sharp_logits_with_bias_matches_float64(temperature):
    """Large, peaked logits with an LM-head bias and a 3001-token vocabulary: the compiled fused body, the same
    body run eagerly, and the eager chunk path all equal the float64 textbook formulas."""
    g = torch.Generator().manual_seed(21)
    n, H, V = 37, 32, 3001
    hidden_b, hidden_r = torch.randn(n, H, generator=g), torch.randn(n, H, generator=g)
    w_b = torch.randn(V, H, generator=g) * 2.5  # logits with std ~14: peaked rows, log-probs down to -100s
    w_r = w_b + 0.3 * torch.randn(V, H, generator=g)
    bias_b, bias_r = torch.randn(V, generator=g) + 30.0, torch.randn(V, generator=g) - 20.0  # offsets cancel
    targets = torch.randint(0, V, (n,), generator=g)
    logits_b, logits_r = hidden_b @ w_b.t(), hidden_r @ w_r.t()
    want = textbook_from_logits(logits_b.double() + bias_b.double(), logits_r.double() + bias_r.double(), targets, temperature)
    assert want["entropy_base"].min() < 0.5 < want["entropy_base"].max()  # some peaked rows, some spread ones
    compiled = metrics._fused_runner(torch.device("cpu"), True)
    runs = {
        "compiled": compiled(logits_b, logits_r, targets, bias_b, bias_r, temperature),
        "fused_eager": fused_metrics(logits_b, logits_r, targets, bias_b, bias_r, temperature),
    }
    eager = chunk_metrics(hidden_b, hidden_r, targets, (w_b, bias_b), (w_r, bias_r), temperature)
    runs["chunk_eager"] = torch.stack([eager[k] for k in METRIC_NAMES])
    blocks = tuple(torch.full((n, V), float("nan")) for _ in range(3))  # the CPU path's reused blocks
    in_place = chunk_metrics(hidden_b, hidden_r, targets, (w_b, bias_b), (w_r, bias_r), temperature, blocks)
    assert all(torch.equal(in_place[k], eager[k]) for k in METRIC_NAMES)  # same operations, same bits
    for name, got in runs.items():
        assert got.shape == (len(METRIC_NAMES), n) and got.dtype == torch.float32
        for i, k in enumerate(METRIC_NAMES):
            # fp32 logits up to ~70 in size round by ~4e-6 each; values up to ~130 (log-probs, KLs) need a relative term
            torch.testing.assert_close(got[i].double(), want[k], atol=2e-5, rtol=2e-6, msg=f"{name} {k}")
    assert (runs["compiled"][5:] > -1e-4).all()  # KLs stay (numerically) non-negative


@needs_compiler
def test_eager_fallback_only_without_compiler_and_said_once(tiny_pair, monkeypatch):
    tok, base, rl = tiny_pair
    seqs, plens = random_batch(len(tok), seed=4)
    ids, attn, resp, _ = pad_batch(seqs, plens, "left", pad_id=tok.pad_token_id)
    kw = dict(input_ids=ids, attention_mask=attn, response_mask=resp, chunk_size=6)
    want = token_metrics(base, rl, **kw, compiled=True)
    monkeypatch.setattr(metrics, "compile_unavailable", lambda device: "no C++ compiler found (test)")
    monkeypatch.setattr(metrics, "_warned_eager", set())
    with pytest.warns(RuntimeWarning, match="eagerly on cpu.*no C.. compiler found"):
        first = token_metrics(base, rl, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once per process, not once per batch
        second = token_metrics(base, rl, **kw)
    for k in METRIC_NAMES:
        torch.testing.assert_close(first[k], want[k], atol=1e-5, rtol=1e-6)
        assert torch.equal(first[k], second[k])
    with pytest.raises(RuntimeError, match=r"compiled=True.*no C\+\+ compiler"):
        token_metrics(base, rl, **kw, compiled=True)
    with pytest.raises(ValueError, match="compiled"):
        token_metrics(base, rl, **kw, compiled="yes")


@needs_compiler
def test_short_last_chunks_reuse_the_compiled_graph(tiny_pair):
    """The number of positions is dynamic: new batch sizes and short last chunks compile nothing new."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    tok, base, rl = tiny_pair
    graphs = lambda: len(_debug_get_cache_entry_list(fused_metrics.__code__))  # noqa: E731
    seqs, plens = random_batch(len(tok), seed=31)
    ids, attn, resp, _ = pad_batch(seqs, plens, "right", pad_id=tok.pad_token_id)
    token_metrics(base, rl, input_ids=ids, attention_mask=attn, response_mask=resp, chunk_size=8, compiled=True)
    before = graphs()
    for chunk, rows in ((8, 3), (11, 4), (13, 2)):  # 35, 35 and 22 positions: last chunks of 3, 2 and 9 rows
        kw = dict(input_ids=ids[:rows], attention_mask=attn[:rows], response_mask=resp[:rows])
        out = token_metrics(base, rl, **kw, chunk_size=chunk, compiled=True)
        want = token_metrics(base, rl, **kw, compiled=False)
        for k in METRIC_NAMES:
            torch.testing.assert_close(out[k], want[k], atol=1e-5, rtol=1e-6)
    assert graphs() == before


@needs_compiler
def test_compile_unavailable_names_the_missing_compiler():
    import torch._inductor.config as inductor_config

    assert compile_unavailable("cpu") is None  # this machine has one (the compiled tests above ran)
    with inductor_config.patch({"cpp.cxx": ("no-such-c++-compiler-h11",)}):
        assert "C++ compiler" in compile_unavailable("cpu")
    assert "cpu and cuda only" in compile_unavailable("meta")


def test_auto_chunk_size_budget_per_device():
    assert auto_chunk_size(32768) == DEFAULT_CHUNK_BYTES // (4 * 32768) == auto_chunk_size(32768, device="cpu")
    assert auto_chunk_size(1000, chunk_bytes=4000 * 7) == 7
    assert auto_chunk_size(10**9) == 1


def test_chunk_size_and_padding_side_do_not_change_results(tiny_pair):
    tok, base, rl = tiny_pair
    seqs, plens = random_batch(len(tok), seed=3)
    runs = []
    for side in ("left", "right"):
        ids, attn, resp, offs = pad_batch(seqs, plens, side, pad_id=tok.pad_token_id)
        for chunk in (1, 7, None):
            out = token_metrics(base, rl, input_ids=ids, attention_mask=attn, response_mask=resp, chunk_size=chunk)
            runs.append([unpad(out, i, o, len(s)) for i, (s, o) in enumerate(zip(seqs, offs))])
    alone = []
    for s, p in zip(seqs, plens):
        ids, attn, resp, _ = pad_batch([s], [p], "right")
        alone.append(unpad(token_metrics(base, rl, input_ids=ids, attention_mask=attn, response_mask=resp), 0, 0, len(s)))
    for run in runs:
        for got, want in zip(run, alone):
            for k in METRIC_NAMES:
                torch.testing.assert_close(got[k], want[k], atol=1e-5, rtol=0)


def test_vocab_rows_beyond_tokenizer_are_masked(tiny_tokenizer):
    tok = tiny_tokenizer
    V = len(tok)
    base = build_model(V + 64, seed=0)
    rl = build_model(V + 64, seed=1)
    with torch.no_grad():  # make the padding rows dominate if they were not masked
        for m in (base, rl):
            m.get_output_embeddings().weight[V:] = m.get_output_embeddings().weight[:64] * 50
    seqs, plens = random_batch(V, n=2, seed=5)
    ids, attn, resp, offs = pad_batch(seqs, plens, "left", pad_id=tok.pad_token_id)
    out = token_metrics(base, rl, input_ids=ids, attention_mask=attn, response_mask=resp, vocab_limit=V)
    ref = naive_reference(base, rl, seqs, plens, vocab_limit=V)
    unmasked = naive_reference(base, rl, seqs, plens)
    for i, (s, off) in enumerate(zip(seqs, offs)):
        got = unpad(out, i, off, len(s))
        for k in METRIC_NAMES:
            torch.testing.assert_close(got[k].double(), ref[i][k], atol=1e-5, rtol=0)
        assert (got["entropy_base"].double() - unmasked[i]["entropy_base"]).abs().max() > 0.1
    with pytest.raises(ValueError, match="vocab_limit"):  # heads of different sizes need an explicit limit
        token_metrics(base, build_model(V, seed=2), input_ids=ids, attention_mask=attn, response_mask=resp)


def test_empty_responses_and_bad_masks(tiny_pair):
    tok, base, rl = tiny_pair
    ids = torch.randint(0, len(tok), (2, 6))
    attn = torch.ones_like(ids)
    out = token_metrics(base, rl, input_ids=ids, attention_mask=attn, response_mask=torch.zeros_like(ids))
    assert all((v == 0).all() and v.shape == ids.shape for v in out.values())
    empty = torch.zeros((0, 0), dtype=torch.long)
    assert token_metrics(base, rl, input_ids=empty, attention_mask=empty, response_mask=empty)["delta_logp"].shape == (0, 0)
    resp = torch.zeros_like(ids)
    resp[:, 0] = 1
    with pytest.raises(ValueError, match="position 0"):
        token_metrics(base, rl, input_ids=ids, attention_mask=attn, response_mask=resp)
    attn2, resp2 = attn.clone(), torch.zeros_like(ids)
    attn2[0, :3] = 0
    resp2[0, 3] = 1  # a response token right after left padding: the prompt is empty
    with pytest.raises(ValueError, match="prompt must be non-empty"):
        token_metrics(base, rl, input_ids=ids, attention_mask=attn2, response_mask=resp2)
    with pytest.raises(ValueError, match="temperature"):
        token_metrics(base, rl, input_ids=ids, attention_mask=attn, response_mask=resp2, temperature=0.0)


def naive_fp32(base, rl, ids, resp, temperature=1.0):
    """The approach the chunking replaces: full (batch, seq, vocab) fp32 logits from each model's forward."""
    lb = torch.log_softmax(base(input_ids=ids).logits.float() / temperature, -1)
    lr = torch.log_softmax(rl(input_ids=ids).logits.float() / temperature, -1)
    tgt = ids[:, 1:].unsqueeze(-1)
    d = lr.gather(-1, tgt) - lb.gather(-1, tgt)
    return d.squeeze(-1) * resp[:, 1:]


def test_peak_memory_grows_with_activations_not_seq_times_vocab():
    """T=512 vs 4096 with a 16k vocabulary and a tiny body: the naive version's extra peak is ≥ ΔT·V·4 bytes per model."""
    V, H = 16384, 16
    base = build_model(V, hidden_size=H, num_layers=1, num_heads=1, num_kv_heads=1, seed=0)
    rl = build_model(V, hidden_size=H, num_layers=1, num_heads=1, num_kv_heads=1, seed=1)
    chunk = 128

    def peak(T, fn):
        ids = torch.randint(0, V, (1, T), generator=torch.Generator().manual_seed(T))
        resp = torch.ones_like(ids)
        resp[:, :8] = 0
        with torch.no_grad():
            return peak_allocated_bytes(lambda: fn(ids, resp))[1]

    chunked = lambda ids, resp: token_metrics(
        base, rl, input_ids=ids, attention_mask=torch.ones_like(ids), response_mask=resp, chunk_size=chunk
    )
    short, long_ = peak(512, chunked), peak(4096, chunked)
    seq_times_vocab = (4096 - 512) * V * 4  # 235 MB: what one model's fp32 logits add from 512 to 4096 tokens
    # Both runs hold a few (chunk, V) buffers; growth is activations, (T, hidden) and (T,) outputs.
    assert long_ - short < seq_times_vocab / 20, (short, long_)
    assert long_ < 8 * chunk * V * 4 + 4096 * 1024, long_
    # The per-token bound is one the naive approach fails (measured over a shorter span to keep the test quick).
    naive = lambda ids, resp: naive_fp32(base, rl, ids, resp)
    naive_per_token = (peak(1024, naive) - peak(512, naive)) / 512
    assert naive_per_token >= V * 4 > 20 * (long_ - short) / (4096 - 512), naive_per_token


# bf16 against the float64 reference, on the tiny pair with final-norm gains raised 4x (unscaled, the models are
# near uniform: KL ~0.03, so a KL of the wrong sign was within the old atol=0.05). Measured with the device
# swapped (REWEIGHT_TEST_DEVICE=cpu, conftest.py), largest |error|: log-probs 8e-3, Δlog p 1.2e-2, entropies
# 4e-3, KLs 1.2e-3; a KL of the wrong sign is off by 2·KL >= 0.64 (KL 0.32-0.51 on these tokens).
BF16_TOL = dict(atol=3e-2, rtol=1e-2)


@pytest.mark.gpu
def test_bf16_on_gpu_agrees_with_the_float64_reference(tiny_pair):
    """bf16 weights on the GPU with an fp32 head and softmax stay close to the float64 textbook values."""
    from conftest import TEST_DEVICE

    tok, base, rl = tiny_pair
    base, rl = copy.deepcopy(base), copy.deepcopy(rl)
    with torch.no_grad():
        for model in (base, rl):
            model.model.norm.weight.mul_(4.0)
    seqs, plens = random_batch(len(tok), seed=11)
    ids, attn, resp, offs = pad_batch(seqs, plens, "left", pad_id=tok.pad_token_id)
    ref = naive_reference(base, rl, seqs, plens)
    assert min(r["kl_rl_base"][p:].min().item() for r, p in zip(ref, plens) if r["kl_rl_base"].numel() > p) > 0.3
    gb, gr = (copy.deepcopy(m).to(TEST_DEVICE, torch.bfloat16) for m in (base, rl))
    dev = lambda t: t.to(TEST_DEVICE)  # noqa: E731
    out = token_metrics(gb, gr, input_ids=dev(ids), attention_mask=dev(attn), response_mask=dev(resp), chunk_size=4)
    for i, (s, off) in enumerate(zip(seqs, offs)):
        got = unpad(out, i, off, len(s))
        for k in METRIC_NAMES:
            torch.testing.assert_close(got[k].cpu().double(), ref[i][k], **BF16_TOL, msg=f"{k} seq {i}")


@pytest.mark.gpu
@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "eager"])
def test_fp32_on_gpu_matches_float64_reference(tiny_pair, compiled):
    """The compiled (Triton) and eager paths on a GPU, fp32 weights, against the float64 CPU reference."""
    tok, base, rl = tiny_pair
    seqs, plens = random_batch(len(tok), seed=12)
    ids, attn, resp, offs = pad_batch(seqs, plens, "right", pad_id=tok.pad_token_id)
    from conftest import TEST_DEVICE

    gb, gr = (copy.deepcopy(m).to(TEST_DEVICE) for m in (base, rl))
    dev = lambda t: t.to(TEST_DEVICE)  # noqa: E731
    out = token_metrics(
        gb, gr, input_ids=dev(ids), attention_mask=dev(attn), response_mask=dev(resp), temperature=0.8,
        chunk_size=7, compiled=compiled,
    )  # fmt: skip
    ref = naive_reference(base, rl, seqs, plens, 0.8)
    for i, (s, off) in enumerate(zip(seqs, offs)):
        got = unpad(out, i, off, len(s))
        for k in METRIC_NAMES:
            torch.testing.assert_close(got[k].cpu().double(), ref[i][k], atol=1e-4, rtol=1e-5, msg=f"{k} seq {i}")


@pytest.mark.gpu
def test_gpu_chunk_is_larger_than_the_cpu_one():
    from conftest import needs_real_cuda

    needs_real_cuda()
    vocab = 151936
    assert auto_chunk_size(vocab, device="cuda") > 4 * auto_chunk_size(vocab, device="cpu")
