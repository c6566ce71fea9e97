#!/usr/bin/env bash
# The paper's qwen25_math_7b setup, reweight (configs/qwen25_math_7b_reweight.yaml). Run on the Ray head node of a cluster
# of trainer.nnodes x 8 GPUs (see launch/), after `reweight-prepare-data`. Extra arguments are
# Hydra overrides, e.g. trainer.default_local_dir=/ckpt/... or seed=2.
set -euo pipefail
exec reweight-train --config-name qwen25_math_7b_reweight "$@"
