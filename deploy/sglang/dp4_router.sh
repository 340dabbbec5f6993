#!/usr/bin/env bash
# Four data-parallel replicas of Qwen2.5-7B-Instruct (one per GPU, e.g. 4x RTX 4090D 24 GB)
# behind sglang-router with the cache-aware policy, so requests that share a prefix (the same
# memchat thread) land on the replica that already holds that prefix in its radix cache.
#
# This uses sglang_router.launch_server (router + one worker per GPU), NOT
# `sglang.launch_server --dp-size`, whose built-in DP controller is not prefix-cache aware.
#
#   SGLANG_API_KEY=... deploy/sglang/dp4_router.sh
#   SGLANG_API_KEY=... GPUS=0,1 deploy/sglang/dp4_router.sh          # two replicas
#
# Extra variables: DP_SIZE (default: number of GPUS), WORKER_BASE_PORT (31000; workers bind
# HOST:port>=WORKER_BASE_PORT), ROUTER_POLICY (cache_aware), ROUTER_STARTUP_TIMEOUT (1800 s),
# ROUTER_EXTRA_ARGS (extra --router-* flags). See common.sh and README.md.

# shellcheck source=common.sh disable=SC1091
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

: "${GPUS:=0,1,2,3}"
: "${DP_SIZE:=$(count_gpus "$GPUS")}"
: "${WORKER_BASE_PORT:=31000}"
: "${ROUTER_POLICY:=cache_aware}"
: "${ROUTER_STARTUP_TIMEOUT:=1800}"
: "${ROUTER_EXTRA_ARGS:=}"
export CUDA_VISIBLE_DEVICES="$GPUS"

n_gpus=$(count_gpus "$GPUS")
((DP_SIZE >= 1 && DP_SIZE <= n_gpus)) || die "DP_SIZE=$DP_SIZE needs at least that many GPUS (have $n_gpus)"

long_context_kv_guard "$GPUS" 1

args=()
common_server_args args
args+=(
  --dp-size "$DP_SIZE"
  --router-policy "$ROUTER_POLICY"
  --router-dp-worker-base-port "$WORKER_BASE_PORT"
  --router-worker-startup-timeout-secs "$ROUTER_STARTUP_TIMEOUT"
)

# Newer sglang-router versions take the key the router uses towards the workers; the workers
# themselves get --api-key above. Only pass it where the installed router knows the flag.
if [[ "$DRY_RUN" == 1 ]] || "$PYTHON" - <<'PY' >/dev/null 2>&1; then
import dataclasses, sys
try:
    from sglang_router.router_args import RouterArgs
except ImportError:
    from sglang_router.launch_router import RouterArgs
sys.exit(0 if "api_key" in {f.name for f in dataclasses.fields(RouterArgs)} else 1)
PY
  args+=(--router-api-key "$SGLANG_API_KEY")
fi

if [[ -n "$ROUTER_EXTRA_ARGS" ]]; then
  read -r -a router_extra <<<"$ROUTER_EXTRA_ARGS"
  args+=("${router_extra[@]}")
fi

launch_and_wait dp_router "$PYTHON" -m sglang_router.launch_server "${args[@]}"
