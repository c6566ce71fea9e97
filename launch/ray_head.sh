#!/usr/bin/env bash
# Start the Ray head node of a cluster for reweight-train jobs (dashboard on, so jobs can be submitted).
#
#   launch/ray_head.sh                      # ports 6379 (GCS) / 8265 (dashboard), resources detected
#   NUM_CPUS=32 NUM_GPUS=8 launch/ray_head.sh
#   launch/ray_head.sh --block              # stay in the foreground (containers, SLURM steps)
#   launch/ray_head.sh -- --object-store-memory=10000000000   # more `ray start` arguments after --
#
# Environment: RAY_PORT, DASHBOARD_PORT, NUM_CPUS, NUM_GPUS, NODE_IP, RAY_AUTH (token|disabled).
# With RAY_AUTH=token (the default) Ray keeps its token in ~/.ray/auth_token (created on first start):
# the workers and the machine you submit from need the same file, or RAY_AUTH_TOKEN set.
set -euo pipefail

args=(--port "${RAY_PORT:-6379}" --dashboard-port "${DASHBOARD_PORT:-8265}" --auth "${RAY_AUTH:-token}")
if [[ -n "${NUM_CPUS:-}" ]]; then args+=(--num-cpus "$NUM_CPUS"); fi
if [[ -n "${NUM_GPUS:-}" ]]; then args+=(--num-gpus "$NUM_GPUS"); fi
if [[ -n "${NODE_IP:-}" ]]; then args+=(--node-ip "$NODE_IP"); fi

exec reweight-launch ray-head "${args[@]}" "$@"
