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
"""

from __future__ import annotations

import math

import torch

METRIC_NAMES = ("logp_base", "logp_rl", "delta_logp", "entropy_base", "entropy_rl", "kl_rl_base", "kl_base_rl")

# Default transient budget of one ``(chunk, vocab)`` fp32 buffer; about five live at once per chunk.
DEFAULT_CHUNK_BYTES = 64 * 2**20


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so left or right padding gives each token its unpadded position.

    Args:
        attention_mask: ``(batch, seq)``, 1 for real tokens, 0 for padding.

    Returns:
        ``(batch, seq)`` long; padding positions get 0 (they are masked out of attention anyway).
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def auto_chunk_size(vocab_size: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Positions per chunk so that one ``(chunk, vocab)`` fp32 buffer stays within ``chunk_bytes``."""
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


def _log_probs(hidden: torch.Tensor, weight, bias, temperature: float) -> torch.Tensor:
    """fp32 log-softmax of ``hidden @ weight.T / T``: ``(chunk, vocab_limit)``.

    Half-precision weights are multiplied with fp32 outputs where the backend supports it (CUDA), so
    the logits are not rounded to bf16 before the softmax; otherwise both sides are upcast.
    """
    if weight.dtype == torch.float32:
        logits = hidden.float() @ weight.t()
    elif hidden.is_cuda and _MM_OUT_DTYPE_OK.get(hidden.device, True):
        try:  # bf16 inputs, fp32 accumulation and output: no rounding of logits to bf16
            logits = torch.mm(hidden.to(weight.dtype), weight.t(), out_dtype=torch.float32)
        except (RuntimeError, TypeError):  # older torch/cuBLAS without it: upcast instead
            _MM_OUT_DTYPE_OK[hidden.device] = False
            return _log_probs(hidden, weight, bias, temperature)
    else:
        logits = hidden.float() @ weight.float().t()
    if bias is not None:
        logits += bias.float()
    if temperature != 1.0:
        logits /= temperature
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
) -> dict[str, torch.Tensor]:
    """All metrics for one chunk of positions.

    Args:
        hidden_base, hidden_rl: ``(chunk, hidden)`` final hidden states of each model at the predicting positions.
        targets: ``(chunk,)`` the token ids being predicted.
        head_base, head_rl: (weight ``(vocab, hidden)``, bias or None) from :func:`_head`.
        temperature: sampling temperature T.

    Returns:
        ``{name: (chunk,) fp32}`` for every name in :data:`METRIC_NAMES`.
    """
    logp_b = _log_probs(hidden_base, *head_base, temperature)
    logp_r = _log_probs(hidden_rl.to(logp_b.device), *head_rl, temperature).to(logp_b.device)
    idx = targets.to(logp_b.device).unsqueeze(1)
    tok_b, tok_r = logp_b.gather(1, idx).view(-1), logp_r.gather(1, idx).view(-1)
    p_b = logp_b.exp()
    entropy_b = -_dot(p_b, logp_b)
    diff = logp_r - logp_b  # (chunk, vocab): log π_RL − log π_Base
    kl_br = -_dot(p_b, diff)
    del p_b, logp_b
    p_r = logp_r.exp()
    entropy_r = -_dot(p_r, logp_r)
    kl_rb = _dot(p_r, diff)
    return {
        "logp_base": tok_b,
        "logp_rl": tok_r,
        "delta_logp": tok_r - tok_b,
        "entropy_base": entropy_b,
        "entropy_rl": entropy_r,
        "kl_rl_base": kl_rb,
        "kl_base_rl": kl_br,
    }


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
        chunk_size: positions per LM-head chunk; None picks one from the vocabulary size
            (:func:`auto_chunk_size`). Results do not depend on it.
        vocab_limit: number of real vocabulary rows (``len(tokenizer)``); LM-head rows beyond it are
            padding and are excluded from every softmax. None uses all rows.

    Returns:
        ``{name: (batch, seq) fp32}`` for every name in :data:`METRIC_NAMES`, on ``input_ids``'s
        device; 0 where ``response_mask`` is 0.
    """
    _validate(input_ids, attention_mask, response_mask, temperature, chunk_size)
    head_b_rows = base_model.get_output_embeddings().weight.shape[0]
    head_r_rows = rl_model.get_output_embeddings().weight.shape[0]
    limit = vocab_limit if vocab_limit is not None else min(head_b_rows, head_r_rows)
    if vocab_limit is None and head_b_rows != head_r_rows:
        raise ValueError(
            f"the models' LM heads have {head_b_rows} and {head_r_rows} rows; pass vocab_limit=len(tokenizer)"
        )
    head_b, head_r = _head(base_model, limit), _head(rl_model, limit)

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
    step = chunk_size or auto_chunk_size(limit)
    for start in range(0, n, step):
        stop = min(start + step, n)
        values = chunk_metrics(
            hidden_b[start:stop], hidden_r[start:stop], targets[start:stop], head_b, head_r, temperature
        )
        for name, v in values.items():
            out[name][b_idx[start:stop], t_idx[start:stop]] = v.to(input_ids.device)
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
