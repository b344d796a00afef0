#!/usr/bin/env bash
# Side-by-side training throughput of tinylm's default model and step:
# ratchet (candle) vs the PyTorch reference, same machine, same thread count,
# one after the other in one run. Needs `pip install torch` (see README.md).
#   benches/reference/compare.sh [SECS] [THREADS]
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-20}
threads=${2:-$(nproc)}
cargo build --release -q
ratchet=$(RAYON_NUM_THREADS=$threads target/release/ratchet bench tinylm --secs "$secs")
torch=$(python3 benches/reference/tinylm_torch.py --threads "$threads" --secs "$secs" --gelu tanh)
echo "$ratchet"
echo "$torch"
r=$(echo "$ratchet" | sed -n 's/^train_tokens_per_sec=//p')
t=$(echo "$torch" | sed -n 's/^train_tokens_per_sec=//p')
python3 -c "print(f'candle_over_torch={float($r)/float($t):.2f}  (threads={$threads}, {$secs}s each)')"
