#!/usr/bin/env python3
"""Trains a random-Fourier-feature regressor with minibatch SGD + momentum.

Follows the ratchet experiment contract: reads the recipe, trains for at most
RATCHET_BUDGET_SECS of wall-clock time, writes its model to --out, and prints
diagnostics as NAME=value lines. Pure Python 3.11: no packages needed.
"""
import argparse
import json
import math
import os
import random
import sys
import time
import tomllib

TRAIN_SEED = 1
N_TRAIN = 512


# How often (seconds of budget) training prints its progress line.
PROGRESS_SECS = 0.25

def target(x):
    return math.sin(3.0 * x) + 0.5 * math.cos(7.0 * x) + 0.3 * x


def dataset(seed, n):
    rng = random.Random(seed)
    xs = [rng.uniform(-1.0, 1.0) for _ in range(n)]
    return xs, [target(x) + rng.gauss(0.0, 0.1) for x in xs]


def feature_map(features, scale, seed):
    rng = random.Random(seed)
    freqs = [scale * rng.gauss(0.0, 1.0) for _ in range(features)]
    phases = [rng.uniform(0.0, 2.0 * math.pi) for _ in range(features)]
    return freqs, phases


def phi(x, freqs, phases):
    return [math.cos(w * x + b) for w, b in zip(freqs, phases)] + [1.0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    with open(args.recipe, "rb") as f:
        recipe = tomllib.load(f)
    opt, model = recipe["optimizer"], recipe["model"]
    lr, mom, wd = float(opt["lr"]), float(opt["momentum"]), float(opt["weight_decay"])
    batch, max_epochs = int(opt["batch_size"]), int(opt["max_epochs"])
    if lr <= 0 or batch <= 0 or not 0 <= mom < 1:
        sys.exit(f"invalid recipe: lr={lr} batch_size={batch} momentum={mom}")
    budget = float(os.environ.get("RATCHET_BUDGET_SECS", "2"))

    freqs, phases = feature_map(int(model["features"]), float(model["scale"]), int(model["seed"]))
    xs, ys = dataset(TRAIN_SEED, N_TRAIN)
    feats = [phi(x, freqs, phases) for x in xs]
    dim = len(freqs) + 1
    w = [0.0] * dim
    v = [0.0] * dim
    order = list(range(N_TRAIN))
    # ratchet's seed re-runs (the noise band) set RATCHET_SEED; it orders the data.
    rng = random.Random(int(os.environ.get("RATCHET_SEED", "0")))
    start = time.monotonic()
    epochs = 0
    # Progress at fixed positions of the budget (`train_mse=<v> at=<secs>`):
    # the squared error of the last epoch's samples, before each step.
    next_progress = PROGRESS_SECS
    while epochs < max_epochs and time.monotonic() - start < budget:
        rng.shuffle(order)
        sq = 0.0
        for i in range(0, N_TRAIN, batch):
            grad = [0.0] * dim
            idx = order[i:i + batch]
            for j in idx:
                f = feats[j]
                err = sum(a * b for a, b in zip(w, f)) - ys[j]
                sq += err * err
                for k in range(dim):
                    grad[k] += err * f[k]
            scale = 2.0 / len(idx)
            for k in range(dim):
                v[k] = mom * v[k] - lr * (grad[k] * scale + wd * w[k])
                w[k] += v[k]
        epochs += 1
        now = time.monotonic() - start
        if now >= next_progress and math.isfinite(sq):
            at = math.floor(now / PROGRESS_SECS) * PROGRESS_SECS
            print(f"train_mse={sq / N_TRAIN:.6g} at={at:.2f}", flush=True)
            next_progress = at + PROGRESS_SECS
    mse = math.nan
    if all(math.isfinite(x) for x in w):
        errs = [sum(a * b for a, b in zip(w, f)) - y for f, y in zip(feats, ys)]
        mse = sum(e * e for e in errs) / N_TRAIN
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "model.json"), "w") as f:
        json.dump({"freqs": freqs, "phases": phases, "weights": w}, f)
    print(f"epochs={epochs}")
    print(f"train_mse={mse}")
    print(f"train_secs={time.monotonic() - start:.3f}")


if __name__ == "__main__":
    main()
