#!/usr/bin/env bash
# shellcheck shell=bash
#
# Shared defaults and helpers for the SGLang launch scripts in this directory.
# Source it; do not run it:   . "$(dirname "$0")/common.sh"
#
# Environment (all optional except SGLANG_API_KEY):
#   MODEL            HF id or local path          (Qwen/Qwen2.5-7B-Instruct)
#   HOST / PORT      bind address / port          (127.0.0.1 / 30000; HOST=0.0.0.0 to expose)
#   CLIENT_HOST      host written into the URL memchat should use (HOST, or 127.0.0.1 for 0.0.0.0)
#   SGLANG_API_KEY   required; clients send "Authorization: Bearer $SGLANG_API_KEY"
#   MEM_FRACTION     --mem-fraction-static        (0.85)
#   CONTEXT_LENGTH   --context-length             (32768, or 131072 with LONG_CONTEXT=1)
#   LONG_CONTEXT     1 = 128K context via static YaRN (factor 4 over 32K)
#   KV_CACHE_DTYPE   auto | fp8_e5m2 | fp8_e4m3   (unset = SGLang default; see README)
#   GPUS             CUDA device list, e.g. 0,1,2,3 (script-specific default)
#   TOOL_CALL_PARSER e.g. qwen25, to get OpenAI tool_calls parsed (unset = off)
#   EXTRA_ARGS       extra launch_server flags, split on whitespace
#   PYTHON           interpreter with sglang installed (python3)
#   LOG_DIR          server logs                  (${TMPDIR:-/tmp}/memchat-sglang)
#   READY_TIMEOUT    seconds to wait for readiness (1800; first run downloads ~15 GB)
#   DETACH           1 = leave the server running and exit once ready
#   DRY_RUN          1 = print the launch command and exit

set -euo pipefail

: "${MODEL:=Qwen/Qwen2.5-7B-Instruct}"
: "${HOST:=127.0.0.1}"
: "${PORT:=30000}"
: "${MEM_FRACTION:=0.85}"
: "${LONG_CONTEXT:=0}"
: "${PYTHON:=python3}"
: "${LOG_DIR:=${TMPDIR:-/tmp}/memchat-sglang}"
: "${READY_TIMEOUT:=1800}"
: "${DETACH:=0}"
: "${DRY_RUN:=0}"
: "${EXTRA_ARGS:=}"
: "${TOOL_CALL_PARSER:=}"
: "${KV_CACHE_DTYPE:=}"

if [[ "$LONG_CONTEXT" == 1 ]]; then
  : "${CONTEXT_LENGTH:=131072}"
else
  : "${CONTEXT_LENGTH:=32768}"
fi

if [[ -z "${CLIENT_HOST:-}" ]]; then
  case "$HOST" in
    0.0.0.0 | :: | "") CLIENT_HOST=127.0.0.1 ;;
    *) CLIENT_HOST=$HOST ;;
  esac
fi

# Qwen2.5 ships with max_position_embeddings=32768; 128K needs static YaRN (factor 4).
YARN_OVERRIDE='{"rope_scaling":{"rope_type":"yarn","type":"yarn","factor":4.0,"original_max_position_embeddings":32768}}'

SERVER_PID=""

log() { printf '[sglang-deploy] %s\n' "$*" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}

require_api_key() {
  if [[ -z "${SGLANG_API_KEY:-}" ]]; then
    die "SGLANG_API_KEY is required (e.g. export SGLANG_API_KEY=\$(openssl rand -hex 24))"
  fi
}

# Number of entries in a comma-separated GPU list ("0,1,2,3" -> 4).
count_gpus() {
  local -a ids
  IFS=, read -r -a ids <<<"$1"
  echo "${#ids[@]}"
}

# Smallest total memory (MiB) among the selected GPUs, or empty if nvidia-smi is unavailable.
min_gpu_mem_mib() {
  command -v nvidia-smi >/dev/null 2>&1 || return 0
  nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits -i "$1" 2>/dev/null |
    sort -n | head -n 1 | tr -d ' '
}

# Flags shared by every launch: model, bind, key, cache report, context, memory, YaRN, KV dtype.
# Usage: common_server_args ARRAY_NAME
common_server_args() {
  local -n _out=$1
  require_api_key
  _out=(
    --model-path "$MODEL"
    --host "$HOST"
    --port "$PORT"
    --api-key "$SGLANG_API_KEY"
    --enable-cache-report
    --context-length "$CONTEXT_LENGTH"
    --mem-fraction-static "$MEM_FRACTION"
  )
  if [[ "$LONG_CONTEXT" == 1 ]]; then
    export SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN=1
    _out+=(--json-model-override-args "$YARN_OVERRIDE")
  fi
  if [[ -n "$KV_CACHE_DTYPE" ]]; then
    _out+=(--kv-cache-dtype "$KV_CACHE_DTYPE")
  fi
  if [[ -n "$TOOL_CALL_PARSER" ]]; then
    _out+=(--tool-call-parser "$TOOL_CALL_PARSER")
  fi
  if [[ -n "$EXTRA_ARGS" ]]; then
    local -a extra
    read -r -a extra <<<"$EXTRA_ARGS"
    _out+=("${extra[@]}")
  fi
}

# With LONG_CONTEXT=1 on cards under 40 GB where each GPU holds all KV heads, a full 128K
# sequence does not fit a bf16 KV pool (7 GiB needed); default to FP8 KV unless set explicitly.
# Usage: long_context_kv_guard GPU_LIST KV_SHARDS   (KV_SHARDS = tensor-parallel size)
long_context_kv_guard() {
  local gpus=$1 shards=$2 mem
  [[ "$LONG_CONTEXT" == 1 && -z "$KV_CACHE_DTYPE" && "$shards" -lt 2 ]] || return 0
  mem=$(min_gpu_mem_mib "$gpus")
  if [[ -n "$mem" && "$mem" -lt 40000 ]]; then
    KV_CACHE_DTYPE=fp8_e5m2
    log "LONG_CONTEXT=1 on ${mem} MiB GPUs: using --kv-cache-dtype fp8_e5m2 so one 128K sequence fits"
    log "(set KV_CACHE_DTYPE=auto to keep bf16 KV, or use tp_no_p2p.sh with TP>=2)"
  elif [[ -z "$mem" ]]; then
    log "WARNING: LONG_CONTEXT=1 and GPU memory unknown; on 24 GB cards set KV_CACHE_DTYPE=fp8_e5m2"
  fi
}

# Poll URL/health until 200, then URL/get_model_info (with the key) until 200.
# Usage: wait_ready URL KEY TIMEOUT_SECONDS [PID]   (URL without /v1; PID: give up if it exits)
wait_ready() {
  local url=${1%/} key=$2 timeout=$3 pid=${4:-}
  local deadline=$((SECONDS + timeout)) next_note=$((SECONDS + 30)) body=""
  local -a auth=()
  [[ -n "$key" ]] && auth=(-H "Authorization: Bearer $key")

  log "waiting for $url/health (timeout ${timeout}s)"
  until curl -fsS -o /dev/null --max-time 5 "$url/health" 2>/dev/null; do
    if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
      log "server process $pid exited before becoming healthy"
      return 1
    fi
    if ((SECONDS >= deadline)); then
      log "timed out after ${timeout}s waiting for $url/health"
      return 1
    fi
    if ((SECONDS >= next_note)); then
      log "still loading... $((timeout - (deadline - SECONDS)))s elapsed"
      next_note=$((SECONDS + 30))
    fi
    sleep 2
  done

  log "healthy; checking $url/get_model_info"
  until body=$(curl -fsS --max-time 10 ${auth[@]+"${auth[@]}"} "$url/get_model_info" 2>/dev/null); do
    if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
      log "server process $pid exited"
      return 1
    fi
    if ((SECONDS >= deadline)); then
      log "timed out after ${timeout}s waiting for $url/get_model_info (wrong API key?)"
      return 1
    fi
    sleep 2
  done
  log "ready: $body"
}

# Print the environment memchat should use.
print_memchat_env() {
  local base="http://${CLIENT_HOST}:${PORT}/v1"
  printf 'MEMCHAT_LLM_BASE_URL=%s MEMCHAT_LLM_MODEL=%s MEMCHAT_LLM_API_KEY=%s\n' \
    "$(shell_quote "$base")" "$(shell_quote "$MODEL")" "$(shell_quote "$SGLANG_API_KEY")"
}

# Single-quote an argument for display unless it is plainly safe.
shell_quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Print a command (copy-pasteable quoting), hiding API keys.
show_command() {
  local arg prev="" out=""
  for arg in "$@"; do
    if [[ "$prev" == --api-key || "$prev" == --router-api-key ]]; then
      out+=" \"\$SGLANG_API_KEY\""
    else
      out+=" $(shell_quote "$arg")"
    fi
    prev=$arg
  done
  log "command:${out}"
}

stop_server() {
  [[ -n "$SERVER_PID" ]] || return 0
  if kill -0 "$SERVER_PID" 2>/dev/null; then
    log "stopping server (pid $SERVER_PID)"
    kill -TERM -- "-$SERVER_PID" 2>/dev/null || kill -TERM "$SERVER_PID" 2>/dev/null || true
    local i
    for i in $(seq 1 30); do
      kill -0 "$SERVER_PID" 2>/dev/null || break
      sleep 1
    done
    if kill -0 "$SERVER_PID" 2>/dev/null; then
      log "server did not stop after ${i}s; sending SIGKILL"
      kill -KILL -- "-$SERVER_PID" 2>/dev/null || kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
  fi
  SERVER_PID=""
}

# Launch a command in its own session (so its whole process tree can be stopped), wait until
# it is ready, print the memchat settings, then either stay attached or detach.
# Usage: launch_and_wait NAME COMMAND...
launch_and_wait() {
  local name=$1
  shift
  require_api_key
  local envs="CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-}"
  [[ -n "${SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN:-}" ]] && envs+=" SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN=1"
  [[ -n "${NCCL_P2P_DISABLE:-}" ]] && envs+=" NCCL_P2P_DISABLE=$NCCL_P2P_DISABLE"
  log "env: $envs"
  show_command "$@"
  if [[ "$DRY_RUN" == 1 ]]; then
    print_memchat_env
    return 0
  fi
  command -v curl >/dev/null 2>&1 || die "curl is required"
  mkdir -p "$LOG_DIR"
  local logfile="$LOG_DIR/${name}_${PORT}.log"
  log "logs: $logfile"

  if command -v setsid >/dev/null 2>&1; then
    setsid "$@" >"$logfile" 2>&1 </dev/null &
  else
    "$@" >"$logfile" 2>&1 </dev/null &
  fi
  SERVER_PID=$!
  if [[ "$DETACH" != 1 ]]; then
    trap 'stop_server' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
  fi

  if ! wait_ready "http://${CLIENT_HOST}:${PORT}" "$SGLANG_API_KEY" "$READY_TIMEOUT" "$SERVER_PID"; then
    log "last log lines:"
    tail -n 40 "$logfile" >&2 || true
    stop_server
    exit 1
  fi

  print_memchat_env
  if [[ "$DETACH" == 1 ]]; then
    log "detached; server pid $SERVER_PID (stop with: kill -TERM -- -$SERVER_PID)"
    return 0
  fi
  log "serving; Ctrl-C stops the server"
  local rc=0
  wait "$SERVER_PID" || rc=$?
  SERVER_PID=""
  log "server exited with status $rc"
  return "$rc"
}
