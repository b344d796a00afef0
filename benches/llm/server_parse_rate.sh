#!/usr/bin/env bash
# How often an LLM specialist's reply is a proposal, on the same small model
# (SmolLM2-135M-Instruct, Q4_1 GGUF): through llama.cpp's OpenAI-compatible
# server (llama-cpp-python, a server nobody here wrote) with json_mode off,
# with json_object, and with the surface's JSON Schema; and run by ratchet
# itself (model_path, decoded under that schema). Each: the optimizer
# specialist of the regression experiment with the shipped
# agents/optimizer.md, TRIALS trials (the baseline is one of them).
#
# Usage: benches/llm/server_parse_rate.sh [TRIALS] [MODEL.gguf] [RUNS]
#   RUNS: some of "plain object schema local" (default all four).
#   PYTHON: a Python with llama-cpp-python[server] (default python3);
#   pip install 'llama-cpp-python[server]' builds llama.cpp (~30 min on 2 cores).
#   RATCHET: the ratchet binary (default the newer of target/release/ratchet
#   and target/debug/ratchet, whose model code is optimized too).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
trials=${1:-11}
model=${2:-$("$root/.ci/fetch-model")}
python=${PYTHON:-python3}
runs=${3:-plain object schema local}
ratchet=${RATCHET:-}
if [[ -z $ratchet ]]; then
    ratchet=$root/target/debug/ratchet
    release=$root/target/release/ratchet
    [[ -x $release && ( ! -x $ratchet || $release -nt $ratchet ) ]] && ratchet=$release
fi
port=${PORT:-18765}
work=$(mktemp -d)
server_pid=
cleanup() {
    [[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

[[ -x $ratchet ]] || { echo "build ratchet first: cargo build (or set RATCHET)" >&2; exit 1; }

# The server, only for runs that use it.
if [[ " $runs " =~ \ (plain|object|schema)\  ]]; then
    "$python" -c 'import llama_cpp' || { echo "no llama-cpp-python in $python (set PYTHON)" >&2; exit 1; }
    "$python" -m llama_cpp.server --model "$model" --host 127.0.0.1 --port "$port" \
        --n_ctx 4096 --model_alias smollm2 >"$work/server.log" 2>&1 &
    server_pid=$!
    for _ in $(seq 120); do
        curl -sf "http://127.0.0.1:$port/v1/models" >/dev/null && break
        sleep 1
    done
    curl -sf "http://127.0.0.1:$port/v1/models" >/dev/null || { cat "$work/server.log" >&2; exit 1; }
fi

# One run: $1 names it, $2 is the specialist's model keys.
run() {
    local name=$1 keys=$2 dir=$work/$1
    mkdir -p "$dir/agents"
    cp -r "$root/experiments/regression" "$dir/experiment"
    cp "$root/agents/optimizer.md" "$dir/agents/"
    cat >"$dir/specialists.toml" <<TOML
[daemon]
experiment = "experiment"
lineage_dir = "lineage"
slots = 1
seed = 1

[[specialist]]
name = "optimizer"
surface = "optimizer"
kind = "llm"
instructions = "agents/optimizer.md"
max_reply_tokens = 300
timeout_secs = 600
$keys
TOML
    local t0=$SECONDS
    (cd "$dir" && "$ratchet" run --trials "$trials" >run.log 2>&1) || { tail -20 "$dir/run.log" >&2; return 1; }
    (cd "$dir" && "$ratchet" lineage list --json) | python3 -c '
import json, sys
ts = [json.loads(l) for l in sys.stdin if l.strip()]
mine = [t for t in ts if t["specialist"] == "optimizer"]
ok = [t for t in mine if t.get("label") != "proposer_error"]
print(f"{sys.argv[1]:<34} {len(ok):>3} of {len(mine):<3} replies are proposals   ({sys.argv[2]} s)")
' "$name" "$((SECONDS - t0))"
}

base="base_url = \"http://127.0.0.1:$port/v1\"
model = \"smollm2\""
echo "parse rates, $((trials - 1)) proposals each, $(basename "$model"), $ratchet:"
for r in $runs; do
    case $r in
        plain) run "llama.cpp server, plain text" "$base
json_mode = \"off\"" ;;
        object) run "llama.cpp server, json_object" "$base
json_mode = \"on\"" ;;
        schema) run "llama.cpp server, json_mode = schema" "$base
json_mode = \"schema\"" ;;
        local) run "ratchet llm-worker (candle), schema" "model_path = \"$model\"" ;;
        *) echo "unknown run $r" >&2; exit 2 ;;
    esac
done
