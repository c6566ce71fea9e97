"""Direction analysis (arXiv 2603.22117, Fig. 1b): exact token-level Δlog p, entropy and KL between a base and an RLVR model."""

from reweight.analysis.metrics import (
    METRIC_NAMES,
    auto_chunk_size,
    compile_unavailable,
    position_ids_from_mask,
    token_metrics,
)

__all__ = ["METRIC_NAMES", "auto_chunk_size", "compile_unavailable", "position_ids_from_mask", "token_metrics"]
