"""Exact token-level direction metrics between a base and an RLVR model (docs/method.md §2).

For a sequence ``y`` (prompt + response, teacher-forced) and each response token ``y_t``:

    Δlog p_t        = log π_RL(y_t | y_<t) − log π_Base(y_t | y_<t)        (signed: the update's direction)
    H_t(π)          = −Σ_v π(v | y_<t) log π(v | y_<t)                      (for π_Base and π_RL)
    KL_t(π_RL‖π_B)  = Σ_v π_RL(v | y_<t) (log π_RL(v | y_<t) − log π_B(v | y_<t)),  and the reverse

over the full vocabulary (rows of the LM head beyond the tokenizer's size are masked out) at the
sampling temperature: π = softmax(logits / T), in fp32.

Memory: the transformer body runs once per model and only the hidden states of positions that
predict a response token are kept, ``(n_tokens, hidden)``. The LM head, the log-softmax and all
reductions then run over chunks of ``chunk_size`` positions, so the largest transient is
``(chunk_size, vocab)`` fp32 – never ``(batch, seq, vocab)`` logits.

Speed: after the two LM-head matmuls of a chunk, everything else (both log-softmaxes, the entropies,
both KLs, the sampled tokens' log-probs) is one function of the two fp32 logit blocks,
:func:`fused_metrics`, written so that a compiler turns it into a few row-wise passes that keep each
row in cache and materialise no ``(chunk, vocab)`` temporary. By default it runs under
``torch.compile`` (static vocabulary size, the number of positions marked dynamic so a short last
chunk is neither padded nor recompiled). Where ``torch.compile`` cannot work (no C++ compiler for a
CPU, no Triton for a GPU, an unsupported Python) the eager :func:`chunk_metrics` runs instead, with a
warning the first time; a compile that fails for any other reason raises.
"""

from __future__ import annotations

import math
import warnings

import torch

METRIC_NAMES = ("logp_base", "logp_rl", "delta_logp", "entropy_base", "entropy_rl", "kl_rl_base", "kl_base_rl")

# Default transient budget of one ``(chunk, vocab)`` fp32 buffer on a CPU; two live at once per chunk on the
# compiled path, about five on the eager one. Measured on 2 CPU cores, the LM-head matmul loses 10% at 512
# rows against one big matmul and 50% at 128 rows, so the budget is not made smaller for memory's sake.
DEFAULT_CHUNK_BYTES = 64 * 2**20
# On a GPU: at most this per ``(chunk, vocab)`` buffer (and at most 1/16 of the free memory). Large chunks keep
# the LM-head matmul efficient and the launches few; at a 151,936-token vocabulary 512 MiB is 883 positions,
# a matmul of 883 x hidden x 151,936, and the two live blocks stay ~1 GiB (naive logits of 4 x 4096 tokens: 57 GB).
GPU_CHUNK_BYTES = 2**29


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so left or right padding gives each token its unpadded position.

    Args:
        attention_mask: ``(batch, seq)``, 1 for real tokens, 0 for padding.

    Returns:
        ``(batch, seq)`` long; padding positions get 0 (they are masked out of attention anyway).
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def device_chunk_bytes(device: torch.device | str | None = None) -> int:
    """Budget of one ``(chunk, vocab)`` fp32 buffer on ``device``: :data:`DEFAULT_CHUNK_BYTES` on a CPU,
    on a GPU :data:`GPU_CHUNK_BYTES` or 1/16 of the free memory if that is less."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type != "cuda":
        return DEFAULT_CHUNK_BYTES
    free, _total = torch.cuda.mem_get_info(device)
    return max(DEFAULT_CHUNK_BYTES, min(GPU_CHUNK_BYTES, free // 16))


def auto_chunk_size(vocab_size: int, chunk_bytes: int | None = None, device: torch.device | str | None = None) -> int:
    """Positions per chunk so that one ``(chunk, vocab)`` fp32 buffer stays within ``chunk_bytes``.

    ``chunk_bytes`` None takes the budget of ``device`` (:func:`device_chunk_bytes`; a CPU if None).
    """
    if chunk_bytes is None:
        chunk_bytes = device_chunk_bytes(device)
    return max(1, chunk_bytes // (4 * max(1, vocab_size)))


def _validate(input_ids, attention_mask, response_mask, temperature, chunk_size) -> None:
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
    for name, t in (("attention_mask", attention_mask), ("response_mask", response_mask)):
        if t.shape != input_ids.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(input_ids.shape)} like input_ids")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    resp, attn = response_mask.bool(), attention_mask.bool()
    if (resp & ~attn).any():
        raise ValueError("response_mask marks positions that attention_mask marks as padding")
    if input_ids.shape[1] and resp[:, 0].any():
        raise ValueError("response_mask marks position 0, which has no context to be predicted from; prepend a prompt")
    if (resp[:, 1:] & ~attn[:, :-1]).any():
        raise ValueError("a response token directly follows padding, so nothing predicts it; the prompt must be non-empty")


def _body(model) -> torch.nn.Module:
    """The transformer without its LM head (``model.model`` for Qwen/Llama-style causal LMs)."""
    body = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    if body is None or body is model:
        raise TypeError(f"{type(model).__name__} exposes no transformer body under base_model_prefix")
    return body


def _predicting_hidden(model, input_ids, attention_mask, b_idx, t_idx) -> torch.Tensor:
    """Last hidden states at the positions predicting each selected token: ``(n_tokens, hidden)``."""
    device = model.get_output_embeddings().weight.device
    ids = input_ids.to(device)
    if bool(attention_mask.all()):
        # No padding: let attention use its causal fast path instead of a (seq, seq) mask.
        out = _body(model)(input_ids=ids, use_cache=False)
    else:
        mask = attention_mask.to(device)
        out = _body(model)(
            input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=False
        )
    hidden = out.last_hidden_state  # (batch, seq, hidden)
    return hidden[b_idx.to(device), (t_idx - 1).to(device)]


def _head(model, vocab_limit: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """LM-head weight ``(vocab_limit, hidden)`` and bias, restricted to the tokenizer's rows."""
    head = model.get_output_embeddings()
    weight = head.weight
    if vocab_limit > weight.shape[0]:
        raise ValueError(f"vocab_limit={vocab_limit} exceeds the LM head's {weight.shape[0]} rows")
    bias = getattr(head, "bias", None)
    return weight[:vocab_limit], (bias[:vocab_limit] if bias is not None else None)


_MM_OUT_DTYPE_OK: dict[torch.device, bool] = {}


def _head_logits(hidden: torch.Tensor, weight: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 ``hidden @ weight.T`` (no bias, no temperature): ``(chunk, hidden), (vocab, hidden) -> (chunk, vocab)``.

    Half-precision weights are multiplied with fp32 outputs where the backend supports it (CUDA), so
    the logits are not rounded to bf16 before the softmax; otherwise both sides are upcast. ``out``, a
    ``(chunk, vocab)`` fp32 buffer, receives fp32 products (on a CPU a fresh buffer per chunk costs page
    faults: large blocks are not cached by its allocator).
    """
    if weight.dtype == torch.float32:
        return torch.mm(hidden.float(), weight.t(), out=out)
    if hidden.is_cuda and _MM_OUT_DTYPE_OK.get(hidden.device, True):
        try:  # bf16 inputs, fp32 accumulation and output: no rounding of logits to bf16
            return torch.mm(hidden.to(weight.dtype), weight.t(), out_dtype=torch.float32)
        except (RuntimeError, TypeError):  # older torch/cuBLAS without it: upcast instead
            _MM_OUT_DTYPE_OK[hidden.device] = False
    return hidden.float() @ weight.float().t()


def _log_probs(hidden: torch.Tensor, weight, bias, temperature: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 log-softmax of ``(hidden @ weight.T + bias) / T``: ``(chunk, vocab_limit)``.

    With ``out`` (a ``(chunk, vocab_limit)`` fp32 buffer, fp32 weights) every step writes into it in place.
    """
    logits = _head_logits(hidden, weight, out=out)
    if bias is not None:
        logits += bias.float()
    if temperature != 1.0:
        logits /= temperature
    if out is not None and logits.data_ptr() == out.data_ptr():
        return torch.log_softmax(logits, dim=-1, out=logits)  # row by row: each row is read before it is written
    return torch.log_softmax(logits, dim=-1)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot product ``(n, v), (n, v) -> (n,)`` without a ``(n, v)`` temporary."""
    return (a.unsqueeze(1) @ b.unsqueeze(2)).view(-1)


def chunk_metrics(
    hidden_base: torch.Tensor,
    hidden_rl: torch.Tensor,
    targets: torch.Tensor,
    head_base: tuple[torch.Tensor, torch.Tensor | None],
    head_rl: tuple[torch.Tensor, torch.Tensor | None],
    temperature: float,
    buffers: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """All metrics for one chunk of positions, eagerly (the path without ``torch.compile``).

    Args:
        hidden_base, hidden_rl: ``(chunk, hidden)`` final hidden states of each model at the predicting positions.
        targets: ``(chunk,)`` the token ids being predicted.
        head_base, head_rl: (weight ``(vocab, hidden)``, bias or None) from :func:`_head`.
        temperature: sampling temperature T.
        buffers: three ``(chunk, vocab)`` fp32 blocks to compute in (on a CPU, where a fresh 64 MiB block
            costs more in page faults than the operation writing it); None allocates them.

    Returns:
        ``{name: (chunk,) fp32}`` for every name in :data:`METRIC_NAMES`.
    """
    buf_b, buf_r, buf_p = buffers if buffers is not None else (None, None, None)
    logp_b = _log_probs(hidden_base, *head_base, temperature, out=buf_b)
    logp_r = _log_probs(hidden_rl.to(logp_b.device), *head_rl, temperature, out=buf_r).to(logp_b.device)
    idx = targets.to(logp_b.device).unsqueeze(1)
    tok_b, tok_r = logp_b.gather(1, idx).view(-1), logp_r.gather(1, idx).view(-1)
    # Three (chunk, vocab) buffers in all, reused in place: logp_b, logp_r and p.
    p = logp_b.exp() if buf_p is None else torch.exp(logp_b, out=buf_p)
    entropy_b = -_dot(p, logp_b)
    log_ratio = logp_b.sub_(logp_r)  # (chunk, vocab): log π_Base − log π_RL, overwriting logp_b
    kl_br = _dot(p, log_ratio)
    p = torch.exp(logp_r, out=p)
    entropy_r = -_dot(p, logp_r)
    kl_rb = -_dot(p, log_ratio)
    return {
        "logp_base": tok_b,
        "logp_rl": tok_r,
        "delta_logp": tok_r - tok_b,
        "entropy_base": entropy_b,
        "entropy_rl": entropy_r,
        "kl_rl_base": kl_rb,
        "kl_base_rl": kl_br,
    }


def fused_metrics(
    logits_base: torch.Tensor,
    logits_rl: torch.Tensor,
    targets: torch.Tensor,
    bias_base: torch.Tensor | None,
    bias_rl: torch.Tensor | None,
    temperature: float,
) -> torch.Tensor:
    """All metrics of one chunk from the two models' raw fp32 logits, as one compilable function.

    With ``z = logits / T − rowmax`` (so every exponential is <= 1), ``s = Σ_v exp(z)`` and ``ℓ = log s``:
    ``log π(v) = z_v − ℓ``, ``H = ℓ − Σ_v exp(z_v) z_v / s`` and, with ``d = z_Base − z_RL``,
    ``KL(π_Base‖π_RL) = Σ_v exp(z_Base,v) d_v / s_Base − (ℓ_Base − ℓ_RL)`` and
    ``KL(π_RL‖π_Base) = (ℓ_Base − ℓ_RL) − Σ_v exp(z_RL,v) d_v / s_RL``. Each is a row reduction over
    element-wise terms, which ``torch.compile`` fuses into passes over each row with nothing of size
    ``(chunk, vocab)`` written back; run eagerly it is correct but allocates several such temporaries.

    Args:
        logits_base, logits_rl: ``(chunk, vocab)`` fp32 ``hidden @ weight.T`` of each model (no bias, no T).
        targets: ``(chunk,)`` long, the token ids being predicted.
        bias_base, bias_rl: ``(vocab,)`` fp32 LM-head biases, or None.
        temperature: sampling temperature T.

    Returns:
        ``(len(METRIC_NAMES), chunk)`` fp32, rows in :data:`METRIC_NAMES` order.
    """
    a = logits_base if bias_base is None else logits_base + bias_base
    b = logits_rl if bias_rl is None else logits_rl + bias_rl
    a, b = a / temperature, b / temperature
    za = a - a.amax(-1, keepdim=True)
    zb = b - b.amax(-1, keepdim=True)
    ea, eb = za.exp(), zb.exp()
    sa, sb = ea.sum(-1), eb.sum(-1)
    la, lb = sa.log(), sb.log()
    d = za - zb
    idx = targets.unsqueeze(1)
    tok_a = za.gather(1, idx).squeeze(1) - la
    tok_b = zb.gather(1, idx).squeeze(1) - lb
    return torch.stack(
        [
            tok_a,
            tok_b,
            tok_b - tok_a,
            la - (ea * za).sum(-1) / sa,
            lb - (eb * zb).sum(-1) / sb,
            (la - lb) - (eb * d).sum(-1) / sb,
            (ea * d).sum(-1) / sa - (la - lb),
        ]
    )


def compile_unavailable(device: torch.device | str) -> str | None:
    """Why ``torch.compile`` cannot build :func:`fused_metrics` for ``device``, or None if it can.

    Only a missing tool counts (a C++ compiler for CPU kernels, Triton for CUDA ones, a Python that
    TorchDynamo supports); this builds nothing, so a compile that then fails still raises.
    """
    device = torch.device(device)
    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile does not support this Python version"
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "Triton is not installed (torch.compile needs it for CUDA kernels)"
    if device.type == "cpu":
        from torch._inductor import exc
        from torch._inductor.cpp_builder import get_cpp_compiler

        try:
            get_cpp_compiler()
        except exc.InvalidCxxCompiler:
            return "no C++ compiler found (torch.compile builds its CPU kernels with one; install g++ or set CXX)"
        return None
    return f"the fused metrics are compiled for cpu and cuda only, not {device.type}"


_compiled_fused_metrics = None
_warned_eager: set[str] = set()


def _fused_runner(device: torch.device, compiled: bool | None):
    """The compiled :func:`fused_metrics`, or None for the eager :func:`chunk_metrics`.

    ``compiled`` None: compiled when :func:`compile_unavailable` finds the tools, else eager with a
    warning once per device type; True: compiled or a ``RuntimeError`` saying what is missing; False: eager.
    """
    global _compiled_fused_metrics
    if compiled is False:
        return None
    reason = compile_unavailable(device)
    if reason is not None:
        if compiled:
            raise RuntimeError(f"token_metrics(compiled=True) on {device.type}: {reason}")
        if device.type not in _warned_eager:
            _warned_eager.add(device.type)
            warnings.warn(
                f"token_metrics computes its per-chunk metrics eagerly on {device.type} (that math runs several times "
                f"slower than compiled): {reason}",
                RuntimeWarning,
                stacklevel=3,
            )
        return None
    if _compiled_fused_metrics is None:
        # Static vocabulary size; the row count is marked dynamic per call, so a short last chunk reuses the graph.
        _compiled_fused_metrics = torch.compile(fused_metrics, fullgraph=True)
    return _run_compiled


# Graphs kept for fused_metrics: one per device, vocabulary size, temperature and bias presence (and 1-row chunks);
# torch keeps 8 per function by default and past that runs the function uncompiled, so a process analysing
# several model pairs would silently lose the compiled path.
RECOMPILE_LIMIT = 64


def _run_compiled(logits_base, logits_rl, targets, bias_base, bias_rl, temperature) -> torch.Tensor:
    """:func:`fused_metrics` compiled, with the number of positions (dim 0) marked dynamic."""
    for t in (logits_base, logits_rl, targets):
        torch._dynamo.maybe_mark_dynamic(t, 0)
    with torch.no_grad(), torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
        return _compiled_fused_metrics(logits_base, logits_rl, targets, bias_base, bias_rl, temperature)


def _eager_chunks(hidden_b, hidden_r, targets, head_b, head_r, temperature: float, step: int) -> torch.Tensor:
    """:func:`chunk_metrics` over chunks of ``step`` positions: ``(n, hidden)`` x2, ``(n,)`` -> ``(7, n)`` fp32.

    On a CPU with fp32 heads its three ``(step, vocab)`` blocks are allocated once and reused.
    """
    n, device = targets.numel(), hidden_b.device
    blocks = None
    if device.type == "cpu" and head_b[0].dtype == head_r[0].dtype == torch.float32:  # reused by every chunk
        blocks = [torch.empty((min(step, n), head_b[0].shape[0]), dtype=torch.float32) for _ in range(3)]
    values = torch.empty((len(METRIC_NAMES), n), dtype=torch.float32, device=device)
    for start in range(0, n, step):
        part = slice(start, start + step)
        rows = min(step, n - start)
        buffers = None if blocks is None else tuple(b[:rows] for b in blocks)
        chunk = chunk_metrics(hidden_b[part], hidden_r[part], targets[part], head_b, head_r, temperature, buffers)
        values[:, part] = torch.stack([chunk[name] for name in METRIC_NAMES])
    return values


def _fused_chunks(fused, hidden_b, hidden_r, targets, head_b, head_r, temperature: float, step: int) -> torch.Tensor:
    """LM heads then ``fused`` (:func:`fused_metrics`) over chunks of ``step`` positions: ``(7, n)`` fp32.

    With fp32 heads the two ``(step, vocab)`` logit blocks are allocated once and reused.
    """
    device, n = hidden_b.device, targets.numel()
    targets = targets.to(device)
    bias_b, bias_r = (None if b is None else b.float().to(device) for _, b in (head_b, head_r))
    buf_b = buf_r = None
    if head_b[0].dtype == head_r[0].dtype == torch.float32:
        buf_b = torch.empty((min(step, n), head_b[0].shape[0]), dtype=torch.float32, device=device)
        buf_r = torch.empty((min(step, n), head_r[0].shape[0]), dtype=torch.float32, device=head_r[0].device)
    values = torch.empty((len(METRIC_NAMES), n), dtype=torch.float32, device=device)
    for start in range(0, n, step):
        part, rows = slice(start, start + step), slice(0, min(step, n - start))
        logits_b = _head_logits(hidden_b[part], head_b[0], out=None if buf_b is None else buf_b[rows])
        logits_r = _head_logits(hidden_r[part], head_r[0], out=None if buf_r is None else buf_r[rows])
        values[:, part] = fused(logits_b, logits_r.to(device), targets[part], bias_b, bias_r, float(temperature))
        del logits_b, logits_r  # without reused buffers, free both blocks before the next chunk allocates its own
    return values


@torch.no_grad()
def token_metrics(
    base_model,
    rl_model,
    *,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    vocab_limit: int | None = None,
    compiled: bool | None = None,
) -> dict[str, torch.Tensor]:
    """Exact per-token Δlog p, entropies and KLs of two causal LMs on the same teacher-forced sequences.

    The value at ``[b, t]`` describes token ``input_ids[b, t]`` predicted from ``input_ids[b, :t]``.
    Padding may be on either side: position ids are counted over real tokens, so every value equals
    the one from processing sequence ``b`` alone.

    Args:
        base_model, rl_model: HF causal LMs sharing a tokenizer (same device; eval mode).
        input_ids: ``(batch, seq)`` prompt + response token ids, padded.
        attention_mask: ``(batch, seq)``, 1 for real tokens.
        response_mask: ``(batch, seq)``, 1 for the tokens to score; each must follow a real token.
        temperature: T of π = softmax(logits / T), the sampling temperature.
        chunk_size: positions per LM-head chunk; None picks one from the vocabulary size and the
            models' device (:func:`auto_chunk_size`). Results do not depend on it.
        vocab_limit: number of real vocabulary rows (``len(tokenizer)``); LM-head rows beyond it are
            padding and are excluded from every softmax. None uses all rows.
        compiled: run the per-chunk metrics as the compiled :func:`fused_metrics` (True), eagerly with
            :func:`chunk_metrics` (False), or compiled where ``torch.compile`` has its tools and eagerly
            with a warning where it has not (None, the default; see :func:`compile_unavailable`).
            Both agree to float32 rounding.

    Returns:
        ``{name: (batch, seq) fp32}`` for every name in :data:`METRIC_NAMES`, on ``input_ids``'s
        device; 0 where ``response_mask`` is 0.
    """
    _validate(input_ids, attention_mask, response_mask, temperature, chunk_size)
    if compiled not in (None, True, False):
        raise ValueError(f"compiled must be True, False or None, got {compiled!r}")
    head_b_rows = base_model.get_output_embeddings().weight.shape[0]
    head_r_rows = rl_model.get_output_embeddings().weight.shape[0]
    limit = vocab_limit if vocab_limit is not None else min(head_b_rows, head_r_rows)
    if vocab_limit is None and head_b_rows != head_r_rows:
        raise ValueError(
            f"the models' LM heads have {head_b_rows} and {head_r_rows} rows; pass vocab_limit=len(tokenizer)"
        )
    head_b, head_r = _head(base_model, limit), _head(rl_model, limit)
    device = head_b[0].device
    fused = _fused_runner(device, compiled)
    if device.type != "cuda":  # upcast half-precision heads once, not once per chunk
        head_b, head_r = ((w.float(), b) for w, b in (head_b, head_r))

    out = {name: torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device) for name in METRIC_NAMES}
    b_idx, t_idx = response_mask.bool().nonzero(as_tuple=True)
    n = b_idx.numel()
    if n == 0:
        return out
    targets = input_ids[b_idx, t_idx]
    if int(targets.max()) >= limit or int(targets.min()) < 0:
        raise ValueError(f"response token ids must lie in [0, {limit}); got ids up to {int(targets.max())}")

    hidden_b = _predicting_hidden(base_model, input_ids, attention_mask, b_idx, t_idx)  # (n, hidden)
    hidden_r = _predicting_hidden(rl_model, input_ids, attention_mask, b_idx, t_idx)
    step = chunk_size or auto_chunk_size(limit, device=device)
    if fused is None:
        values = _eager_chunks(hidden_b, hidden_r, targets, head_b, head_r, temperature, step)
    else:
        values = _fused_chunks(fused, hidden_b, hidden_r, targets, head_b, head_r, temperature, step)
    values = values.to(input_ids.device)
    for i, name in enumerate(METRIC_NAMES):
        out[name][b_idx, t_idx] = values[i]
    return out


@torch.no_grad()
def check_head_path(model, probe_ids: torch.Tensor, *, atol: float = 1e-2, name: str = "model") -> None:
    """Refuse a model whose ``forward`` logits are not ``lm_head(body(x))`` (e.g. logit soft-capping or scaling).

    :func:`token_metrics` applies the LM head itself, chunk by chunk; a model that transforms its logits
    afterwards would be measured wrongly, so this compares both paths on a short probe ``(1, seq)``.
    """
    device = model.get_output_embeddings().weight.device
    ids = probe_ids.to(device)
    reference = model(input_ids=ids, use_cache=False).logits.float()
    hidden = _body(model)(input_ids=ids, use_cache=False).last_hidden_state
    weight, bias = _head(model, model.get_output_embeddings().weight.shape[0])
    ours = torch.log_softmax(_log_probs(hidden[0], weight, bias, 1.0), -1)
    err = (ours - torch.log_softmax(reference[0], -1)).abs().max().item()
    if not err <= atol:
        raise ValueError(
            f"{name}: its forward() logits differ from lm_head(hidden states) by {err:.3g} (log-prob); it likely "
            "transforms logits after the head (soft-capping, scaling), which the chunked analysis does not reproduce"
        )
