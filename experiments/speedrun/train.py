#!/usr/bin/env python3
"""Trains a random-Fourier-feature regressor with minibatch SGD + momentum
for the recipe's number of epochs, and times it.

The shape of Airbench's task on a CPU: the metric is how long training
takes (`train_secs`, minimized), and a recipe counts only if the model it
trains is accurate enough (eval's `val_r2`, held to a gate in
experiment.toml). Training stops at RATCHET_BUDGET_SECS if the epochs take
longer. Pure Python 3.11: no packages needed.
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
N_TRAIN = 2048


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
    lr, mom = float(opt["lr"]), float(opt["momentum"])
    batch, epochs = int(opt["batch_size"]), int(opt["epochs"])
    if lr <= 0 or batch <= 0 or epochs <= 0 or not 0 <= mom < 1:
        sys.exit(f"invalid recipe: lr={lr} batch_size={batch} epochs={epochs} momentum={mom}")
    budget = float(os.environ.get("RATCHET_BUDGET_SECS", "5"))

    # The clock starts before the features are built: a wider model costs
    # time there too.
    start = time.monotonic()
    freqs, phases = feature_map(int(model["features"]), float(model["scale"]), int(model["seed"]))
    xs, ys = dataset(TRAIN_SEED, N_TRAIN)
    feats = [phi(x, freqs, phases) for x in xs]
    dim = len(freqs) + 1
    w = [0.0] * dim
    v = [0.0] * dim
    order = list(range(N_TRAIN))
    # ratchet's seed re-runs set RATCHET_SEED; it orders the data.
    rng = random.Random(int(os.environ.get("RATCHET_SEED", "0")))
    done = 0
    while done < epochs and time.monotonic() - start < budget:
        rng.shuffle(order)
        for i in range(0, N_TRAIN, batch):
            grad = [0.0] * dim
            idx = order[i:i + batch]
            for j in idx:
                f = feats[j]
                err = sum(a * b for a, b in zip(w, f)) - ys[j]
                for k in range(dim):
                    grad[k] += err * f[k]
            scale = 2.0 / len(idx)
            for k in range(dim):
                v[k] = mom * v[k] - lr * grad[k] * scale
                w[k] += v[k]
        done += 1
    secs = time.monotonic() - start
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "model.json"), "w") as f:
        json.dump({"freqs": freqs, "phases": phases, "weights": w, "train_secs": secs,
                   "epochs": done}, f)
    print(f"epochs={done}")
    print(f"train_secs={secs:.4f}")


if __name__ == "__main__":
    main()
