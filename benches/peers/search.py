#!/usr/bin/env python3
"""Search efficiency on tinylm: ratchet's default specialists against uniform
random search and Optuna's TPE sampler, on the same trainer, the same number
of trials and the same wall-clock budget per trial.

Every method starts from the experiment's own recipe (its first trial) and
runs two trials at a time, one CPU thread each (what `ratchet run` does with
`slots = 2` on 2 cores). The peers drive the same `ratchet tinylm train` and
`ratchet tinylm eval --split full` commands ratchet's evaluator runs, with
the same environment (RATCHET_BUDGET_SECS, RATCHET_SEED, one thread).

"Best confirmed val_bpb after k trials" is, for every method, the mean full-eval
val_bpb over training seeds 0, 1 and 2 of the recipe the method would hand
over after its first k trials:
- ratchet: its incumbent (a kept trial; its own run and two seed re-runs are
  in lineage already, they are how it decides to keep);
- random and TPE: the trial with the best seed-0 score so far, trained again
  afterwards with seeds 1 and 2 (the same three-seed protocol; those re-runs
  are counted as extra runs, not trials).

Setup (Python 3.11; not part of the CI test run):
    python3 -m pip install -r benches/peers/requirements.txt
Run (release build first; about 47 minutes with the defaults on 2 cores):
    cargo build --release
    python3 benches/peers/search.py --trials 24 --budget-secs 10 --seeds 0,1,2
It writes benches/peers/results/{runs.json,table.md,search.svg}.
"""

import argparse
import concurrent.futures as futures
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT = ROOT / "experiments" / "tinylm"


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


def load_experiment():
    exp = tomllib.loads((EXPERIMENT / "experiment.toml").read_text())
    space = {}
    for surface in exp["surface"]:
        space.update(surface["params"])
    return exp, space


def prepare(work: Path, budget: int):
    """A copy of the tinylm experiment with this budget per trial."""
    if work.exists():
        shutil.rmtree(work)
    (work / "experiment").mkdir(parents=True)
    text = (EXPERIMENT / "experiment.toml").read_text()
    text, n = re.subn(r"(?m)^budget_secs = \d+", f"budget_secs = {budget}", text)
    assert n == 1, "budget_secs not found in experiment.toml"
    (work / "experiment" / "experiment.toml").write_text(text)
    shutil.copy(EXPERIMENT / "recipe.toml", work / "experiment" / "recipe.toml")


def set_key(text: str, dotted: str, value) -> str:
    """Sets `key = value` in the recipe's `[table]` (the recipe's simple layout)."""
    table, key = dotted.split(".", 1)
    lines = text.split("\n")
    current = None
    for i, line in enumerate(lines):
        m = re.match(r"^\[(\w+)\]\s*$", line)
        if m:
            current = m.group(1)
            continue
        m = re.match(rf"^({re.escape(key)}\s*=\s*)([^#]*?)(\s*(#.*)?)$", line)
        if current == table and m:
            lines[i] = m.group(1) + toml_value(value) + m.group(3)
            return "\n".join(lines)
    raise KeyError(dotted)


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, float):
        return repr(v)
    return str(v)


def argv(cmd, ratchet):
    return [ratchet if a == "{ratchet}" else a for a in cmd]


def train_and_eval(ratchet, exp, budget, config, seed, run_dir: Path):
    """One run: train with `config` and seed, full eval. Returns val_bpb or None."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    recipe = (EXPERIMENT / "recipe.toml").read_text()
    for k, v in config.items():
        recipe = set_key(recipe, k, v)
    (run_dir / "recipe.toml").write_text(recipe)
    env = dict(os.environ)
    env.update(
        RATCHET_BUDGET_SECS=str(budget),
        RATCHET_SEED=str(seed),
        RAYON_NUM_THREADS="1",
        OMP_NUM_THREADS="1",
    )
    try:
        with open(run_dir / "train.log", "w") as out:
            t = subprocess.run(argv(exp["train"], ratchet), cwd=run_dir, env=env,
                               stdout=out, stderr=subprocess.STDOUT, timeout=exp["timeout_secs"])
        if t.returncode != 0:
            return None
        e = subprocess.run(argv(exp["eval"]["full"], ratchet), cwd=run_dir, env=env,
                           capture_output=True, text=True, timeout=exp["eval"]["timeout_secs"])
    except subprocess.TimeoutExpired:
        return None
    (run_dir / "eval.log").write_text(e.stdout + e.stderr)
    if e.returncode != 0:
        return None
    metrics = dict(re.findall(r"(?m)^(\w+)=(\S+)$", e.stdout))
    try:
        score = float(metrics[exp["metric"]])
        size = float(metrics.get("artifact_bytes", 0))
    except (KeyError, ValueError):
        return None
    gates = exp.get("gates", {})
    if score != score or score > gates.get("min_quality", float("inf")):
        return None
    if size > gates.get("max_artifact_bytes", float("inf")):
        return None
    return score


def peer(method, ratchet, exp, space, budget, trials, seed, work: Path):
    """Random or TPE search; returns the trials in order: config and seed-0 score."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if method == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    study = optuna.create_study(direction="minimize", sampler=sampler)
    recipe = tomllib.loads((EXPERIMENT / "recipe.toml").read_text())
    study.enqueue_trial({k: recipe[k.split(".")[0]][k.split(".")[1]] for k in space})
    done = []
    lock = threading.Lock()

    def objective(trial):
        config = {}
        for k, spec in space.items():
            kind = spec["type"]
            if kind == "log_float":
                config[k] = trial.suggest_float(k, spec["min"], spec["max"], log=True)
            elif kind == "float":
                config[k] = trial.suggest_float(k, spec["min"], spec["max"])
            elif kind == "int":
                config[k] = trial.suggest_int(k, spec["min"], spec["max"])
            else:
                config[k] = trial.suggest_categorical(k, spec["values"])
        score = train_and_eval(ratchet, exp, budget, config, 0, work / f"t{trial.number}")
        with lock:
            done.append({"number": trial.number, "config": config, "score": score})
            log(f"{method} seed {seed}: trial {len(done)}/{trials} val_bpb={score}")
        if score is None:
            raise optuna.TrialPruned()  # a failed run: no evidence for TPE's model
        return score

    study.optimize(objective, n_trials=trials, n_jobs=2, catch=())
    done.sort(key=lambda t: t["number"])
    return done


def confirm_peer(ratchet, exp, budget, rows, work: Path):
    """Seeds 1 and 2 of every recipe that was best-so-far; the curve of means."""
    best, best_so_far = None, []
    for r in rows:
        if r["score"] is not None and (best is None or r["score"] < best["score"]):
            best = r
        best_so_far.append(best)
    distinct = {id(b): b for b in best_so_far if b is not None}.values()
    jobs = [(b, s) for b in distinct for s in (1, 2)]
    with futures.ThreadPoolExecutor(2) as pool:
        scores = list(pool.map(
            lambda j: train_and_eval(ratchet, exp, budget, j[0]["config"], j[1],
                                     work / f"confirm-{j[0]['number']}-s{j[1]}"), jobs))
    for (b, _), s in zip(jobs, scores):
        b.setdefault("seed_scores", [b["score"]]).append(s)
    curve = []
    for b in best_so_far:
        vals = [] if b is None else [v for v in b["seed_scores"] if v is not None]
        curve.append(statistics.mean(vals) if len(vals) == 3 else None)
    return curve, len(jobs)


def ratchet_run(ratchet, budget, trials, seed, work: Path):
    """`ratchet run` with the default specialists; the curve of its incumbent."""
    shutil.copytree(ROOT / "agents", work / "agents")
    spec = (ROOT / "specialists.toml").read_text()
    spec = re.sub(r'(?m)^experiment = .*$', 'experiment = "experiment"', spec)
    spec = re.sub(r'(?m)^lineage_dir = .*$', 'lineage_dir = "lineage"', spec)
    spec, n = re.subn(r'(?m)^seed = \d+', f"seed = {seed}", spec)
    assert n == 1
    (work / "specialists.toml").write_text(spec)
    with open(work / "run.log", "w") as out:
        subprocess.run([ratchet, "run", "-c", "specialists.toml", "--trials", str(trials)],
                       cwd=work, stdout=out, stderr=subprocess.STDOUT, check=True)
    listed = subprocess.run([ratchet, "lineage", "-c", "specialists.toml", "list", "--json"],
                            cwd=work, capture_output=True, text=True, check=True).stdout
    rows = [json.loads(line) for line in listed.splitlines() if line.strip()]
    rows.sort(key=lambda t: t["id"])
    rows = rows[:trials]  # rebased trials are trials too: the first `trials` records
    curve, best = [], None
    for t in rows:
        if t["status"] == "kept":
            vals = [t.get("full_score") or t.get("score")]
            vals += [r.get("full_score") for r in t.get("seed_runs", [])]
            vals = [v for v in vals if v is not None]
            if len(vals) == 3:
                mean = statistics.mean(vals)
                if best is None or mean < best:
                    best = mean
        curve.append(best)
    curve += [best] * (trials - len(curve))  # the specialists ran out of ideas
    runs = len(rows) + sum(len(t.get("seed_runs", [])) for t in rows)
    return curve, rows, runs


def svg(results, trials, floor, path: Path):
    """The median curves of each method, and the floor, as a small SVG."""
    w, h, left, right, top, bottom = 640, 400, 60, 130, 20, 45
    curves = {m: median_curve(results[m], trials) for m in results}
    values = [v for c in curves.values() for v in c if v is not None] + [floor]
    lo, hi = min(values) - 0.1, max(values) + 0.1
    x = lambda k: left + (k - 1) / max(trials - 1, 1) * (w - left - right)
    y = lambda v: top + (hi - v) / (hi - lo) * (h - top - bottom)
    colors = {"ratchet": "#1b7837", "random": "#762a83", "tpe": "#e08214"}
    names = {"ratchet": "ratchet", "random": "random search", "tpe": "Optuna TPE"}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<line x1="{left}" y1="{h-bottom}" x2="{w-right}" y2="{h-bottom}" stroke="black"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h-bottom}" stroke="black"/>']
    steps = 5
    for i in range(steps + 1):
        v = lo + (hi - lo) * i / steps
        out.append(f'<text x="{left-6}" y="{y(v)+4:.1f}" text-anchor="end">{v:.2f}</text>')
        out.append(f'<line x1="{left}" y1="{y(v):.1f}" x2="{w-right}" y2="{y(v):.1f}" stroke="#eee"/>')
    for k in sorted({1, trials} | set(range(0, trials + 1, max(trials // 6, 1))) - {0}):
        out.append(f'<text x="{x(k):.1f}" y="{h-bottom+16}" text-anchor="middle">{k}</text>')
    out.append(f'<text x="{(left+w-right)/2}" y="{h-8}" text-anchor="middle">trials</text>')
    out.append(f'<text x="14" y="{(top+h-bottom)/2}" transform="rotate(-90 14 {(top+h-bottom)/2})" text-anchor="middle">best confirmed val_bpb (median of seeds)</text>')
    out.append(f'<line x1="{left}" y1="{y(floor):.1f}" x2="{w-right}" y2="{y(floor):.1f}" stroke="black" stroke-dasharray="6 4"/>')
    out.append(f'<text x="{w-right+6}" y="{y(floor)+4:.1f}">entropy floor {floor:.3f}</text>')
    for i, (m, c) in enumerate(curves.items()):
        pts = []
        for k, v in enumerate(c):
            if v is None:
                continue
            if pts:  # a step: the best so far holds until it changes
                pts.append((x(k + 1), pts[-1][1]))
            pts.append((x(k + 1), y(v)))
        if pts:
            d = " ".join(f"{px:.1f},{py:.1f}" for px, py in pts)
            out.append(f'<polyline points="{d}" fill="none" stroke="{colors[m]}" stroke-width="2"/>')
        out.append(f'<text x="{w-right+6}" y="{top+14+16*i}" fill="{colors[m]}">{names[m]}</text>')
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")


def median_curve(per_seed, trials):
    out = []
    for k in range(trials):
        vals = [c[k] for c in per_seed if c[k] is not None]
        out.append(statistics.median(vals) if vals else None)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ratchet", default=str(ROOT / "target" / "release" / "ratchet"))
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--budget-secs", type=int, default=10)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default="ratchet,random,tpe")
    ap.add_argument("--out", default=str(ROOT / "benches" / "peers" / "results"))
    ap.add_argument("--work", default=None, help="scratch directory (default: OUT/work)")
    ap.add_argument("--reuse", action="append", default=[],
                    help="a runs.json of an earlier run (repeatable; the first one that has a method "
                         "wins): its runs of methods not run now join the table and plot, to measure "
                         "a change of ratchet against the same peer runs. `--methods none` only merges.")
    a = ap.parse_args()
    ratchet = str(Path(a.ratchet).resolve())
    exp, space = load_experiment()
    out = Path(a.out)
    work_root = Path(a.work) if a.work else out / "work"
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in a.seeds.split(",")]
    methods = [m for m in a.methods.split(",") if m and m != "none"]
    full = exp["eval"]["full"]
    mix = full[full.index("--mix") + 1]
    floor_out = subprocess.run([ratchet, "tinylm", "floor", "--mix", mix], capture_output=True,
                               text=True, check=True).stdout
    floor = float(re.search(r"floor_bpb=(\S+)", floor_out).group(1))

    results = {m: [] for m in methods}
    run_methods = list(methods)  # the ones run now; `methods` gains the reused
    detail = {"trials": a.trials, "budget_secs": a.budget_secs, "seeds": seeds, "floor": floor,
              "runs": []}
    for path in a.reuse:
        old = json.loads(Path(path).read_text())
        if (old["trials"], old["budget_secs"]) != (a.trials, a.budget_secs):
            sys.exit(f"{path} has other --trials/--budget-secs")
        taken = set(results)
        for r in old["runs"]:
            if r["method"] not in taken and r["seed"] in seeds:
                results.setdefault(r["method"], []).append(r["curve"])
                detail["runs"].append(dict(r, reused_from=str(path)))
    methods += [m for m in ("ratchet", "random", "tpe") if m in results and m not in methods]
    started = time.time()
    # Seed by seed, every method in turn, so a slow stretch of the machine
    # hits all methods alike.
    for seed in seeds:
        for m in run_methods:
            work = work_root / f"{m}-s{seed}"
            if work.exists():
                shutil.rmtree(work)
            work.mkdir(parents=True)
            t0 = time.time()
            log(f"{m} seed {seed}: start")
            if m == "ratchet":
                prepare(work, a.budget_secs)
                curve, rows, runs = ratchet_run(ratchet, a.budget_secs, a.trials, seed, work)
                trial_rows = [{"id": t["id"], "specialist": t["specialist"], "status": t["status"],
                               "score": t.get("full_score") or t.get("score")} for t in rows]
            else:
                prepare(work, a.budget_secs)
                rows = peer(m, ratchet, exp, space, a.budget_secs, a.trials, seed, work)
                curve, extra = confirm_peer(ratchet, exp, a.budget_secs, rows, work)
                runs = len(rows) + extra
                trial_rows = [{"number": r["number"], "score": r["score"]} for r in rows]
            secs = time.time() - t0
            log(f"{m} seed {seed}: done in {secs:.0f} s, best confirmed {curve[-1]}")
            results[m].append(curve)
            detail["runs"].append({"method": m, "seed": seed, "curve": curve, "train_runs": runs,
                                   "secs": round(secs), "trials": trial_rows})
            (out / "runs.json").write_text(json.dumps(detail, indent=1) + "\n")

    (out / "runs.json").write_text(json.dumps(detail, indent=1) + "\n")
    ks = sorted({1, a.trials} | set(range(4, a.trials + 1, 4)))
    lines = ["| trials | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    med = {m: median_curve(results[m], a.trials) for m in methods}
    for k in ks:
        cells = [f"{med[m][k-1]:.3f}" if med[m][k-1] is not None else "–" for m in methods]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    runs = {m: statistics.median(r["train_runs"] for r in detail["runs"] if r["method"] == m)
            for m in methods}
    lines.append("| training runs (median) | " + " | ".join(f"{runs[m]:g}" for m in methods) + " |")
    table = "\n".join(lines) + "\n"
    (out / "table.md").write_text(table)
    svg(results, a.trials, floor, out / "search.svg")
    print(table)
    print(f"floor_bpb={floor:.3f}; {time.time() - started:.0f} s in all; wrote {out}")


if __name__ == "__main__":
    main()
