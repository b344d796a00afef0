#!/usr/bin/env python3
"""Search efficiency: ratchet's default specialists against uniform random
search, Optuna's TPE sampler and TPE with a median pruner, on one or more of
the repository's experiments (tinylm, regression), with the same trainer, the
same number of trials and the same wall-clock budget per trial.

Every method starts from the experiment's own recipe (its first trial) and
runs two trials at a time, one CPU thread each (what `ratchet run` does with
`slots = 2` on 2 cores). The peers drive the experiment's own train and eval
commands (`eval.full` when it has one, else `eval.proxy`) with the same
environment ratchet's executor sets (RATCHET_BUDGET_SECS, RATCHET_SEED, one
thread), in a run directory holding the experiment's files.

"Best confirmed score after k trials" is, for every method, the mean score
over fresh training seeds 101, 102 and 103 of the recipe the method would hand
over after its first k trials (ratchet: its incumbent; peers: the trial with
the best seed-0 score so far). Every such recipe is trained again with those
seeds after the search; those runs are counted apart (`confirm_runs`), not as
trials and not in slot time. Slot time is the sum of the wall-clock seconds of
every training run (train + eval) a method spent on its trials, ratchet's seed
re-runs included; `at_time` compares the methods at the slot time the
cheapest run used.

Setup (Python 3.11; not part of the CI test run):
    python3 -m pip install -r benches/peers/requirements.txt
Run (release build first; hours with the defaults on 2 cores):
    cargo build --release
    python3 benches/peers/search.py --experiment tinylm,regression
It writes benches/peers/results/{summary.json,runs.json,table.md,search-<experiment>.svg}.
"""

import argparse
import concurrent.futures as futures
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
METHODS = ("ratchet", "random", "tpe", "tpe_pruned")
CONFIRM_SEEDS = (101, 102, 103)
# The benchmark's budget per trial where it is not the experiment's own.
BENCH_BUDGET = {"tinylm": 10}
PROGRESS = re.compile(r"^(\w+)=(\S+)\s+at=(\S+)$")


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


class Experiment:
    """experiments/<name>: its experiment.toml, search space and commands."""

    def __init__(self, name: str):
        self.name = name
        self.dir = ROOT / "experiments" / name
        if not (self.dir / "experiment.toml").is_file():
            sys.exit(f"no experiment {self.dir}/experiment.toml")
        self.toml = tomllib.loads((self.dir / "experiment.toml").read_text())
        self.metric = self.toml["metric"]
        self.direction = self.toml.get("direction", "minimize")
        assert self.direction in ("minimize", "maximize"), self.direction
        self.space = {}
        for surface in self.toml["surface"]:
            self.space.update(surface["params"])
        self.surfaces = {s["name"] for s in self.toml["surface"]}
        ev = self.toml["eval"]
        self.eval_cmd = ev.get("full") or ev["proxy"]
        self.recipe_name = self.toml.get("recipe", "recipe.toml")
        self.recipe_text = (self.dir / self.recipe_name).read_text()

    def better(self, a, b) -> bool:
        """`a` strictly better than `b`; None is worse than any score."""
        if a is None:
            return False
        if b is None:
            return True
        return a < b if self.direction == "minimize" else a > b

    def recipe(self, config) -> str:
        text = self.recipe_text
        for k, v in config.items():
            text = set_key(text, k, v)
        return text

    def baseline(self):
        recipe = tomllib.loads(self.recipe_text)
        out = {}
        for k in self.space:
            node = recipe
            for part in k.split("."):
                node = node[part]
            out[k] = node
        return out

    def copy_files(self, dest: Path, with_toml: bool):
        """The experiment's files (all of them but experiment.toml unless `with_toml`)."""
        dest.mkdir(parents=True, exist_ok=True)
        for p in self.dir.iterdir():
            if p.name == "__pycache__" or (p.name == "experiment.toml" and not with_toml):
                continue
            if p.is_dir():
                shutil.copytree(p, dest / p.name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(p, dest / p.name)


def prepare(exp: Experiment, work: Path, budget: int):
    """A copy of the experiment in work/experiment with this budget per trial."""
    exp.copy_files(work / "experiment", with_toml=True)
    path = work / "experiment" / "experiment.toml"
    text, n = re.subn(r"(?m)^budget_secs = \d+", f"budget_secs = {budget}", path.read_text())
    assert n == 1, "budget_secs not found in experiment.toml"
    path.write_text(text)


def set_key(text: str, dotted: str, value) -> str:
    """Sets `key = value` in the recipe's `[table]` (top level for an undotted key)."""
    table, _, key = dotted.rpartition(".")
    table = table or None
    lines = text.split("\n")
    current = None
    for i, line in enumerate(lines):
        m = re.match(r"^\[([\w.]+)\]\s*(#.*)?$", line)
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
    return [a.replace("{ratchet}", ratchet) for a in cmd]


def train_and_eval(ratchet, exp: Experiment, budget, config, seed, run_dir: Path, progress=None):
    """One run in its own directory: the experiment's files, the recipe with
    `config`, train with `seed`, eval. Returns {"score", "secs", "pruned"}:
    score None when the run failed or missed a gate; secs of train + eval.

    `progress(name, value, at)` is called for every `NAME=value at=POSITION`
    line the trainer prints; when it returns True the train process group is
    killed and the run is pruned."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    exp.copy_files(run_dir, with_toml=False)
    (run_dir / exp.recipe_name).write_text(exp.recipe(config))
    env = dict(os.environ)
    env.update(
        RATCHET_BUDGET_SECS=str(budget),
        RATCHET_SEED=str(seed),
        RAYON_NUM_THREADS="1",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",  # progress lines arrive as they are printed
    )
    result = {"score": None, "secs": 0.0, "pruned": False}
    t0 = time.monotonic()
    proc = subprocess.Popen(argv(exp.toml["train"], ratchet), cwd=run_dir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", start_new_session=True)
    killed = {"timeout": False}

    def kill(why=None):
        if why:
            killed[why] = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    timer = threading.Timer(exp.toml["timeout_secs"], kill, args=("timeout",))
    timer.start()
    try:
        with open(run_dir / "train.log", "w") as out:
            for line in proc.stdout:
                out.write(line)
                m = PROGRESS.match(line.rstrip("\n"))
                if progress is None or not m or result["pruned"]:
                    continue
                try:
                    value = float(m.group(2))
                except ValueError:
                    continue
                if math.isfinite(value) and progress(m.group(1), value, m.group(3)):
                    result["pruned"] = True
                    kill()
        code = proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            kill()
            proc.wait()
    result["secs"] = time.monotonic() - t0
    if result["pruned"] or killed["timeout"] or code != 0:
        return result
    t1 = time.monotonic()
    try:
        e = subprocess.run(argv(exp.eval_cmd, ratchet), cwd=run_dir, env=env,
                           capture_output=True, text=True, timeout=exp.toml["eval"]["timeout_secs"])
    except subprocess.TimeoutExpired:
        result["secs"] += time.monotonic() - t1
        return result
    result["secs"] += time.monotonic() - t1
    (run_dir / "eval.log").write_text(e.stdout + e.stderr)
    if e.returncode != 0:
        return result
    metrics = dict(re.findall(r"(?m)^(\w+)=(\S+)$", e.stdout))
    try:
        score = float(metrics[exp.metric])
        size = float(metrics.get("artifact_bytes", 0))
    except (KeyError, ValueError):
        return result
    gates = exp.toml.get("gates", {})
    if not math.isfinite(score):
        return result
    if "min_quality" in gates and exp.better(gates["min_quality"], score):
        return result
    if size > gates.get("max_artifact_bytes", float("inf")):
        return result
    result["score"] = score
    return result


def confirm(ratchet, exp, budget, recipes, work: Path):
    """Trains every (key, config) in `recipes` with the fresh seeds, two at a
    time; returns {key: {"scores": [...], "mean": mean or None}} (the mean
    only when all seeds scored)."""
    jobs = [(key, config, s) for key, config in recipes for s in CONFIRM_SEEDS]
    with futures.ThreadPoolExecutor(2) as pool:
        scores = list(pool.map(
            lambda j: train_and_eval(ratchet, exp, budget, j[1], j[2],
                                     work / f"confirm-{j[0]}-s{j[2]}")["score"], jobs))
    out = {key: {"scores": []} for key, _ in recipes}
    for (key, _, _), s in zip(jobs, scores):
        out[key]["scores"].append(s)
    for v in out.values():
        ok = [s for s in v["scores"] if s is not None]
        v["mean"] = statistics.mean(ok) if len(ok) == len(CONFIRM_SEEDS) else None
    return out, len(jobs)


def peer(method, ratchet, exp: Experiment, budget, trials, seed, work: Path):
    """Random, TPE or pruned TPE search; the trials in order: config, seed-0
    score, slot seconds."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = None
    if method == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
        if method == "tpe_pruned":
            pruner = optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=0)
    study = optuna.create_study(direction=exp.direction, sampler=sampler,
                                pruner=pruner or optuna.pruners.NopPruner())
    study.enqueue_trial(exp.baseline())
    done = []
    lock = threading.Lock()
    watched = {"name": None}  # the first intermediate metric a trainer prints

    def objective(trial):
        config = {}
        for k, spec in exp.space.items():
            kind = spec["type"]
            if kind == "log_float":
                config[k] = trial.suggest_float(k, spec["min"], spec["max"], log=True)
            elif kind == "float":
                config[k] = trial.suggest_float(k, spec["min"], spec["max"])
            elif kind == "int":
                config[k] = trial.suggest_int(k, spec["min"], spec["max"])
            else:
                config[k] = trial.suggest_categorical(k, spec["values"])
        reported = set()

        def progress(name, value, at):
            with lock:
                watched["name"] = watched["name"] or name
            if name != watched["name"]:
                return False
            try:
                step = int(at) if re.fullmatch(r"[+-]?\d+", at) else int(round(float(at) * 10))
            except ValueError:
                return False
            if step in reported:
                return False
            reported.add(step)
            trial.report(value, step)
            return trial.should_prune()

        r = train_and_eval(ratchet, exp, budget, config, 0, work / f"t{trial.number}",
                           progress if pruner else None)
        with lock:
            done.append({"number": trial.number, "config": config, "score": r["score"],
                         "slot_secs": r["secs"], "pruned": r["pruned"]})
            what = "pruned" if r["pruned"] else f"{exp.metric}={r['score']}"
            log(f"{exp.name} {method} seed {seed}: trial {len(done)}/{trials} {what}")
        if r["score"] is None:
            raise optuna.TrialPruned()  # pruned, or a failed run: no value for TPE
        return r["score"]

    study.optimize(objective, n_trials=trials, n_jobs=2, catch=())
    done.sort(key=lambda t: t["number"])
    return done


def peer_curves(ratchet, exp, budget, rows, work: Path):
    """Confirms every recipe that was best-so-far on seed 0; the curve of
    their confirmed means."""
    best, best_so_far = None, []
    for r in rows:
        if r["score"] is not None and (best is None or exp.better(r["score"], best["score"])):
            best = r
        best_so_far.append(best)
    distinct = {b["number"]: b for b in best_so_far if b is not None}
    confirmed, n = confirm(ratchet, exp, budget,
                           [(f"t{k}", b["config"]) for k, b in distinct.items()], work)
    for k, b in distinct.items():
        b["confirm_scores"] = confirmed[f"t{k}"]["scores"]
        b["confirmed"] = confirmed[f"t{k}"]["mean"]
    curve = [None if b is None else b["confirmed"] for b in best_so_far]
    return curve, n


def specialists_for(exp: Experiment, seed: int) -> str:
    """The repository's specialists.toml for this work directory: the
    experiment copy, its own lineage, this seed, and only the specialists
    whose surface the experiment has."""
    spec = (ROOT / "specialists.toml").read_text()
    spec = re.sub(r'(?m)^experiment = .*$', 'experiment = "experiment"', spec)
    spec = re.sub(r'(?m)^lineage_dir = .*$', 'lineage_dir = "lineage"', spec)
    spec, n = re.subn(r'(?m)^seed = \d+', f"seed = {seed}", spec)
    assert n == 1

    def keep(block):
        m = re.search(r'(?m)^surface = "(\w+)"', block.group(0))
        return "" if m and m.group(1) not in exp.surfaces else block.group(0)

    # A block: its header and the lines up to the next blank line or table.
    spec = re.sub(r'(?m)^\[\[specialist\]\]\n(?:[^\[\n][^\n]*\n)*\n?', keep, spec)
    kept = re.findall(r'(?m)^surface = "(\w+)"', spec)
    assert kept, f"no specialist of specialists.toml has a surface of {exp.name}"
    return spec


def secs_of(*reports):
    return sum(((r or {}).get("duration_ms") or 0) for r in reports) / 1000.0


def ratchet_run(ratchet, exp: Experiment, budget, trials, seed, work: Path):
    """`ratchet run` with the default specialists; its incumbents confirmed
    with the fresh seeds; the curve of the incumbent after each trial."""
    prepare(exp, work, budget)
    shutil.copytree(ROOT / "agents", work / "agents")
    (work / "specialists.toml").write_text(specialists_for(exp, seed))
    with open(work / "run.log", "w") as out:
        subprocess.run([ratchet, "run", "-c", "specialists.toml", "--trials", str(trials)],
                       cwd=work, stdout=out, stderr=subprocess.STDOUT, check=True)
    listed = subprocess.run([ratchet, "lineage", "-c", "specialists.toml", "list", "--json"],
                            cwd=work, capture_output=True, text=True, check=True).stdout
    rows = [json.loads(line) for line in listed.splitlines() if line.strip()]
    rows.sort(key=lambda t: t["id"])
    rows = rows[:trials]  # rebased trials are trials too: the first `trials` records
    runs = 0
    for t in rows:
        t["slot_secs"] = secs_of(t.get("train"), t.get("eval"), t.get("full_eval"))
        runs += t.get("train") is not None
        for s in t.get("seed_runs") or []:
            t["slot_secs"] += secs_of(s.get("train"), s.get("proxy"), s.get("full"))
            runs += s.get("train") is not None
    # In the order they were kept: a trial kept over an incumbent that
    # replaced its parent meanwhile has a lower id than the one it replaced.
    def kept_at(t):
        return next(c["at_ms"] for c in t["history"] if c["status"] == "kept")

    kept = sorted((t for t in rows if t["status"] == "kept"), key=kept_at)
    confirmed, n = confirm(ratchet, exp, budget, [(f"k{t['id']}", t["config"]) for t in kept], work)
    for t in kept:
        t["confirm_scores"] = confirmed[f"k{t['id']}"]["scores"]
        t["confirmed"] = confirmed[f"k{t['id']}"]["mean"]
    curve, incumbent = [], None
    for t in rows:
        # The incumbent after this trial: the last kept of the trials so far.
        so_far = [k for k in kept if k["id"] <= t["id"]]
        incumbent = so_far[-1] if so_far else None
        curve.append(None if incumbent is None else incumbent["confirmed"])
    # A keep reproduces when its fresh-seed mean beats the one of the
    # incumbent it replaced.
    keeps = list(zip(kept, kept[1:]))
    false_keeps = sum(1 for old, new in keeps
                      if new["confirmed"] is None or not exp.better(new["confirmed"], old["confirmed"]))
    return curve, rows, runs, n, len(keeps), false_keeps


def time_curve(slot_secs, curve, trials):
    """(cumulative slot seconds, best confirmed) after each trial, padded to
    `trials` (a method that stopped early holds its last point)."""
    out, total = [], 0.0
    for s, v in zip(slot_secs, curve):
        total += s
        out.append([round(total, 3), v])
    while len(out) < trials:
        out.append(list(out[-1]) if out else [0.0, None])
    return out


def value_at(tc, mark):
    """The best confirmed score at the last trial whose slot time is ≤ mark."""
    v = None
    for secs, val in tc:
        if secs > mark + 1e-9:
            break
        v = val
    return v


def median(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def median_curve(per_seed, trials):
    return [median(c[k] for c in per_seed) for k in range(trials)]


def svg(exp: Experiment, results, trials, floor, path: Path):
    """The median curves of each method, and the floor if known, as a small SVG."""
    w, h, left, right, top, bottom = 640, 400, 60, 170, 20, 45
    curves = {m: median_curve(results[m], trials) for m in results}
    values = [v for c in curves.values() for v in c if v is not None]
    values += [floor] if floor is not None else []
    if not values:
        values = [0.0, 1.0]
    pad = max((max(values) - min(values)) * 0.05, 1e-3)
    lo, hi = min(values) - pad, max(values) + pad
    x = lambda k: left + (k - 1) / max(trials - 1, 1) * (w - left - right)
    y = lambda v: top + (hi - v) / (hi - lo) * (h - top - bottom)
    colors = {"ratchet": "#1b7837", "random": "#762a83", "tpe": "#e08214", "tpe_pruned": "#2166ac"}
    names = {"ratchet": "ratchet", "random": "random search", "tpe": "Optuna TPE",
             "tpe_pruned": "TPE + median pruner"}
    better = "lower" if exp.direction == "minimize" else "higher"
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<line x1="{left}" y1="{h-bottom}" x2="{w-right}" y2="{h-bottom}" stroke="black"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h-bottom}" stroke="black"/>']
    steps = 5
    for i in range(steps + 1):
        v = lo + (hi - lo) * i / steps
        out.append(f'<text x="{left-6}" y="{y(v)+4:.1f}" text-anchor="end">{v:.3g}</text>')
        out.append(f'<line x1="{left}" y1="{y(v):.1f}" x2="{w-right}" y2="{y(v):.1f}" stroke="#eee"/>')
    for k in sorted({1, trials} | set(range(0, trials + 1, max(trials // 6, 1))) - {0}):
        out.append(f'<text x="{x(k):.1f}" y="{h-bottom+16}" text-anchor="middle">{k}</text>')
    out.append(f'<text x="{(left+w-right)/2}" y="{h-8}" text-anchor="middle">trials ({exp.name})</text>')
    out.append(f'<text x="14" y="{(top+h-bottom)/2}" transform="rotate(-90 14 {(top+h-bottom)/2})" text-anchor="middle">best confirmed {exp.metric} (median of seeds; {better} is better)</text>')
    if floor is not None:
        out.append(f'<line x1="{left}" y1="{y(floor):.1f}" x2="{w-right}" y2="{y(floor):.1f}" stroke="black" stroke-dasharray="6 4"/>')
        out.append(f'<text x="{w-right+6}" y="{y(floor)+4:.1f}">entropy floor {floor:.3f}</text>')
    for i, (m, c) in enumerate(curves.items()):
        pts = []
        for k, v in enumerate(c):
            if v is None:
                continue
            if pts:  # a step: the value holds until it changes
                pts.append((x(k + 1), pts[-1][1]))
            pts.append((x(k + 1), y(v)))
        if pts:
            d = " ".join(f"{px:.1f},{py:.1f}" for px, py in pts)
            out.append(f'<polyline points="{d}" fill="none" stroke="{colors.get(m, "gray")}" stroke-width="2"/>')
        out.append(f'<text x="{w-right+6}" y="{top+14+16*i}" fill="{colors.get(m, "gray")}">{names.get(m, m)}</text>')
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")


def budgets(arg, names):
    """`--budget-secs`: N for every experiment, or NAME=N pairs; the default
    is BENCH_BUDGET, else the experiment's own budget_secs."""
    out = {}
    if arg:
        for part in arg.split(","):
            name, eq, secs = part.rpartition("=")
            if eq:
                out[name] = int(secs)
            else:
                out.update({n: int(secs) for n in names})
    return out


def fmt(v):
    return "–" if v is None else f"{v:.4g}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiment", default="tinylm",
                    help="experiments/<name>: tinylm, regression, or a comma list of them")
    ap.add_argument("--ratchet", default=str(ROOT / "target" / "release" / "ratchet"))
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--budget-secs", default=None,
                    help="seconds per trial: N for every experiment, or NAME=N,... (default: "
                         "tinylm 10, others their experiment.toml's budget_secs)")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out", default=str(ROOT / "benches" / "peers" / "results"))
    ap.add_argument("--work", default=None, help="scratch directory (default: OUT/work)")
    ap.add_argument("--reuse", action="append", default=[],
                    help="a runs.json of an earlier run (repeatable; the first one that has a method "
                         "and seed of an experiment wins): its runs of (method, seed) pairs not run now "
                         "join the table and plot, to measure a change of ratchet against the same peer "
                         "runs, or to add seeds. `--methods none` only merges.")
    a = ap.parse_args()
    ratchet = str(Path(a.ratchet).resolve())
    names = [n for n in a.experiment.split(",") if n]
    exps = {n: Experiment(n) for n in names}
    given = budgets(a.budget_secs, names)
    budget = {n: given.get(n, BENCH_BUDGET.get(n, exps[n].toml["budget_secs"])) for n in names}
    out = Path(a.out)
    work_root = Path(a.work) if a.work else out / "work"
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in a.seeds.split(",")]
    methods = [m for m in a.methods.split(",") if m and m != "none"]
    for m in methods:
        if m not in METHODS:
            sys.exit(f"unknown method {m}: one of {', '.join(METHODS)}")

    detail, results = {}, {}
    for n, exp in exps.items():
        floor = None
        if n == "tinylm":
            mix = exp.eval_cmd[exp.eval_cmd.index("--mix") + 1]
            floor_out = subprocess.run([ratchet, "tinylm", "floor", "--mix", mix],
                                       capture_output=True, text=True, check=True).stdout
            floor = float(re.search(r"floor_bpb=(\S+)", floor_out).group(1))
        detail[n] = {"trials": a.trials, "budget_secs": budget[n], "seeds": seeds,
                     "metric": exp.metric, "direction": exp.direction, "floor": floor,
                     "confirm_seeds": list(CONFIRM_SEEDS), "runs": []}
        results[n] = {m: [] for m in methods}
    for path in a.reuse:
        old = json.loads(Path(path).read_text())
        if "runs" in old:
            sys.exit(f"{path} was written by an older search.py (tinylm only, seeds 0-2 as "
                     "confirmation, no slot time); it cannot be merged")
        for n in names:
            if n not in old:
                continue
            o = old[n]
            if (o["trials"], o["budget_secs"], o.get("confirm_seeds")) != \
                    (a.trials, budget[n], list(CONFIRM_SEEDS)):
                sys.exit(f"{path} has other --trials/--budget-secs/confirmation seeds for {n}")
            have = {(r["method"], r["seed"]) for r in detail[n]["runs"]}
            for r in o["runs"]:
                key = (r["method"], r["seed"])
                if key in have or (r["method"] in methods and r["seed"] in seeds):
                    continue  # run now, or taken from an earlier --reuse
                have.add(key)
                results[n].setdefault(r["method"], []).append(r)
                detail[n]["runs"].append(dict(r, reused_from=str(path)))

    def save():
        (out / "runs.json").write_text(json.dumps(detail, indent=1) + "\n")

    started = time.time()
    # Seed by seed, every experiment and method in turn, so a slow stretch
    # of the machine hits all methods alike.
    for seed in seeds:
        for n, exp in exps.items():
            for m in methods:
                work = work_root / n / f"{m}-s{seed}"
                if work.exists():
                    shutil.rmtree(work)
                work.mkdir(parents=True)
                t0 = time.time()
                log(f"{n} {m} seed {seed}: start ({budget[n]} s per trial)")
                rec = {"method": m, "seed": seed}
                if m == "ratchet":
                    curve, rows, runs, nconf, keeps, false_keeps = ratchet_run(
                        ratchet, exp, budget[n], a.trials, seed, work)
                    trial_rows = [{k: t.get(k) for k in ("id", "specialist", "status", "slot_secs",
                                                         "confirmed", "confirm_scores", "label")}
                                  | {"score": t["full_score"] if t.get("full_score") is not None
                                     else t.get("score"),
                                     "pruned": t.get("decision") == "pruned",
                                     "seed_runs": len(t.get("seed_runs") or [])} for t in rows]
                    rec.update(keeps=keeps, false_keeps=false_keeps)
                else:
                    rows = peer(m, ratchet, exp, budget[n], a.trials, seed, work)
                    curve, nconf = peer_curves(ratchet, exp, budget[n], rows, work)
                    runs = len(rows)
                    trial_rows = [{k: r.get(k) for k in ("number", "score", "slot_secs", "pruned",
                                                         "confirmed", "confirm_scores")}
                                  for r in rows]
                slot = [t["slot_secs"] for t in rows]
                curve += [curve[-1] if curve else None] * (a.trials - len(curve))
                tc = time_curve(slot, curve, a.trials)
                secs = time.time() - t0
                log(f"{n} {m} seed {seed}: done in {secs:.0f} s, {tc[-1][0]:.0f} slot s, "
                    f"best confirmed {curve[-1]}")
                rec.update(curve=curve, time_curve=tc, slot_secs=tc[-1][0], train_runs=runs,
                           confirm_runs=nconf, secs=round(secs), trials=trial_rows)
                results[n][m].append(rec)
                detail[n]["runs"].append(rec)
                save()
    save()

    summary = {}
    meta = {"trials": a.trials, "budget_secs": budget, "time_mark_secs": {},
            "confirm_seeds": list(CONFIRM_SEEDS)}
    tables = []
    for n, exp in exps.items():
        res = results[n]
        ms = [m for m in METHODS if m in res and res[m]]
        every = [r for m in ms for r in res[m]]
        mark = min((r["time_curve"][-1][0] for r in every), default=None)
        meta["time_mark_secs"][n] = mark
        summary[n] = {}
        for m in ms:
            rs = res[m]
            fk = None
            if m == "ratchet":
                keeps = sum(r.get("keeps", 0) for r in rs)
                fk = sum(r.get("false_keeps", 0) for r in rs) / keeps if keeps else None
            summary[n][m] = {
                "at_trials": median(r["curve"][a.trials - 1] for r in rs),
                "at_time": median(value_at(r["time_curve"], mark) for r in rs),
                "seeds": len(rs),
                "false_keep_rate": fk,
                "slot_secs": median(r["slot_secs"] for r in rs),
                "runs": median(r["train_runs"] for r in rs),
            }
        ks = sorted({1, a.trials} | set(range(4, a.trials + 1, 4)))
        med = {m: median_curve([r["curve"] for r in res[m]], a.trials) for m in ms}
        lines = [f"### {n}: best confirmed {exp.metric} ({exp.direction}), median of seeds", "",
                 "| trials | " + " | ".join(ms) + " |", "|---" * (len(ms) + 1) + "|"]
        for k in ks:
            lines.append(f"| {k} | " + " | ".join(fmt(med[m][k - 1]) for m in ms) + " |")
        s = summary[n]
        rows = [
            (f"at slot time {mark:.0f} s" if mark is not None else "at slot time –",
             lambda m: fmt(s[m]["at_time"])),
            ("slot seconds (median)", lambda m: f"{s[m]['slot_secs']:.0f}"),
            ("training runs (median)", lambda m: f"{s[m]['runs']:g}"),
            ("of them stopped early (median)",
             lambda m: f"{median(sum(bool(t.get('pruned')) for t in r['trials']) for r in res[m]):g}"),
            # Trials the experiment's pre-flight check failed before they
            # trained (ratchet only: the peers have no pre-flight), and the
            # training time that saved (their budget each).
            ("failed pre-flight / slot-seconds saved (median)",
             lambda m: (lambda k: f"{k:g} / {k * budget[n]:g}")(
                 median(sum(t.get("label") == "preflight_failed" for t in r["trials"])
                        for r in res[m]) or 0)),
            ("confirmation runs (median)",
             lambda m: f"{median(r['confirm_runs'] for r in res[m]):g}"),
            ("false_keep_rate", lambda m: "–" if s[m]["false_keep_rate"] is None
             else f"{s[m]['false_keep_rate']:.2f}"),
            ("seeds", lambda m: str(s[m]["seeds"])),
        ]
        for label, cell in rows:
            lines.append(f"| {label} | " + " | ".join(cell(m) for m in ms) + " |")
        table = "\n".join(lines) + "\n"
        tables.append(table)
        (out / f"table-{n}.md").write_text(table)
        svg(exp, {m: [r["curve"] for r in res[m]] for m in ms}, a.trials, detail[n]["floor"],
            out / f"search-{n}.svg")
        if n == "tinylm":
            shutil.copy(out / "search-tinylm.svg", out / "search.svg")
    summary["meta"] = meta
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "table.md").write_text("\n".join(tables))
    print("\n".join(tables))
    print(json.dumps(summary, indent=1))
    for n in names:
        if detail[n]["floor"] is not None:
            print(f"{n}: floor_bpb={detail[n]['floor']:.3f}")
    print(f"{time.time() - started:.0f} s in all; wrote {out}")


if __name__ == "__main__":
    main()
