#!/usr/bin/env python3
"""Scores a trained regressor on held-out data: prints val_mse and diagnostics."""
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
    if not all(math.isfinite(x) for x in w):
        mse = math.nan
    else:
        errs = [sum(a * b for a, b in zip(w, phi(x, m["freqs"], m["phases"]))) - y for x, y in zip(xs, ys)]
        mse = sum(e * e for e in errs) / N_VAL
    print(f"val_mse={mse}")
    print(f"params={len(w)}")
    print(f"artifact_bytes={os.path.getsize(path)}")


if __name__ == "__main__":
    main()
