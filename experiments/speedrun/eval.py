#!/usr/bin/env python3
"""Scores a trained regressor: its training time (the metric) and how well
it fits held-out data (val_r2, the accuracy the gate holds it to)."""
import argparse
import json
import math
import os

from train import dataset, phi

VAL_SEED = 2  # never the training seed: evaluation data is held out
N_VAL = 256


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    args = ap.parse_args()
    path = os.path.join(args.checkpoint, "model.json")
    with open(path) as f:
        m = json.load(f)
    xs, ys = dataset(VAL_SEED, N_VAL)
    w = m["weights"]
    mean = sum(ys) / N_VAL
    total = sum((y - mean) ** 2 for y in ys)
    if all(math.isfinite(x) for x in w):
        sq = sum((sum(a * b for a, b in zip(w, phi(x, m["freqs"], m["phases"]))) - y) ** 2
                 for x, y in zip(xs, ys))
        r2 = 1.0 - sq / total
    else:
        r2 = math.nan
    print(f"train_secs={m['train_secs']}")
    print(f"val_r2={r2}")
    print(f"epochs={m['epochs']}")
    print(f"artifact_bytes={os.path.getsize(path)}")


if __name__ == "__main__":
    main()
