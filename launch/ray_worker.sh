#!/usr/bin/env bash
# Start a Ray worker node that joins a head started with launch/ray_head.sh.
#
#   launch/ray_worker.sh 10.0.0.1:6379
#   NUM_CPUS=32 NUM_GPUS=8 launch/ray_worker.sh 10.0.0.1:6379 --block
#
# Environment: NUM_CPUS, NUM_GPUS, NODE_IP, RAY_AUTH (token|disabled; the same as the head's).
set -euo pipefail

if [[ $# -lt 1 || "$1" == -* ]]; then
  echo "usage: $0 HEAD_IP:GCS_PORT [reweight-launch ray-worker options]" >&2
  exit 2
fi
head_address="$1"
shift

args=(--address "$head_address" --auth "${RAY_AUTH:-token}")
if [[ -n "${NUM_CPUS:-}" ]]; then args+=(--num-cpus "$NUM_CPUS"); fi
if [[ -n "${NUM_GPUS:-}" ]]; then args+=(--num-gpus "$NUM_GPUS"); fi
if [[ -n "${NODE_IP:-}" ]]; then args+=(--node-ip "$NODE_IP"); fi

exec reweight-launch ray-worker "${args[@]}" "$@"
