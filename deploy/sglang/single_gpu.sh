#!/usr/bin/env bash
# One SGLang server for Qwen2.5-7B-Instruct on a single GPU (e.g. one 24 GB RTX 4090D).
#
#   SGLANG_API_KEY=... deploy/sglang/single_gpu.sh
#   SGLANG_API_KEY=... GPUS=1 PORT=30001 deploy/sglang/single_gpu.sh
#   SGLANG_API_KEY=... LONG_CONTEXT=1 deploy/sglang/single_gpu.sh   # 128K via YaRN (FP8 KV on 24 GB)
#
# See common.sh for all variables and README.md for the memory arithmetic.

# shellcheck source=common.sh disable=SC1091
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

: "${GPUS:=0}"
[[ "$(count_gpus "$GPUS")" == 1 ]] || die "single_gpu.sh takes exactly one GPU (GPUS=$GPUS)"
export CUDA_VISIBLE_DEVICES="$GPUS"

long_context_kv_guard "$GPUS" 1

args=()
common_server_args args

launch_and_wait single_gpu "$PYTHON" -m sglang.launch_server "${args[@]}"
