#!/usr/bin/env bash
# One tensor-parallel SGLang server spanning several GPUs that have no peer-to-peer access
# (consumer cards such as the RTX 4090D): custom all-reduce needs P2P, so it is disabled and
# NCCL goes through host memory. Prefer dp4_router.sh for throughput; use TP when a single
# request needs more KV memory than one card has (e.g. full 128K contexts in bf16).
#
#   SGLANG_API_KEY=... deploy/sglang/tp_no_p2p.sh                      # TP=2 on GPUs 0,1
#   SGLANG_API_KEY=... LONG_CONTEXT=1 deploy/sglang/tp_no_p2p.sh       # 128K, bf16 KV fits
#   SGLANG_API_KEY=... GPUS=0,1,2,3 deploy/sglang/tp_no_p2p.sh         # TP=4
#
# Extra variables: TP_SIZE (default: number of GPUS; Qwen2.5-7B has 4 KV heads -> 1, 2 or 4),
# NCCL_P2P_DISABLE (1). See common.sh and README.md.

# shellcheck source=common.sh disable=SC1091
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

: "${GPUS:=0,1}"
: "${TP_SIZE:=$(count_gpus "$GPUS")}"
export CUDA_VISIBLE_DEVICES="$GPUS"
export NCCL_P2P_DISABLE="${NCCL_P2P_DISABLE:-1}"

n_gpus=$(count_gpus "$GPUS")
((TP_SIZE >= 1 && TP_SIZE <= n_gpus)) || die "TP_SIZE=$TP_SIZE needs at least that many GPUS (have $n_gpus)"
case "$TP_SIZE" in
  1 | 2 | 4) ;;
  *) log "WARNING: Qwen2.5-7B has 28 query / 4 KV heads; TP_SIZE=$TP_SIZE will replicate KV heads" ;;
esac

long_context_kv_guard "$GPUS" "$TP_SIZE"

args=()
common_server_args args
args+=(--tp-size "$TP_SIZE" --disable-custom-all-reduce)

launch_and_wait tp_no_p2p "$PYTHON" -m sglang.launch_server "${args[@]}"
