"""Search overhead: wall time of K tiny trials through ``cascade search`` (Ray Tune + Optuna + MLflow) vs the
same K trials run back-to-back in a plain Python loop.

    python bench/search_overhead.py [--trials 4 --config configs/smoke.yaml]

The search runs first, one trial at a time with all CPUs (so nothing is gained from parallelism), with a
random sampler (its samples do not depend on the order trials finish in); the plain loop then runs exactly
the configurations the search sampled, with ``cascade.run_prune`` on the same data, teacher and threads.
A second search with one CPU per trial, as many trials at once as there are CPUs, shows what the search
buys back. Teacher training and data decoding happen once before anything is timed. Everything is written
under a temporary directory (MLflow in SQLite there). Writes bench/search_overhead.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from cascade.engine import resolve_device
from cascade.teacher import get_teacher
from cascade.train import load_prune_data, run_prune
from search import load_config, run_search
from search.config import trial_prune_config

HERE = Path(__file__).parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(HERE.parent / "configs" / "smoke.yaml"))
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--out", default=str(HERE / "search_overhead.json"))
    args = ap.parse_args()
    cpus = os.cpu_count() or 1
    tmp = Path(tempfile.mkdtemp(prefix="cascade-overhead-"))
    os.environ["CASCADE_CACHE"] = str(tmp / "cache")
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # MLflow in SQLite under tmp

    def config(name: str, concurrency: int, cpu: int):
        return load_config(args.config, [f"experiment={name}", f"results_dir={tmp / 'results'}",
                                         f"num_trials={args.trials}", f"concurrency={concurrency}",
                                         f"resources.cpu={cpu}", "sampler.name=random", "mlflow.tracking_uri=null"])

    serial = config("serial", 1, cpus)
    base = trial_prune_config(serial, {})
    data = load_prune_data(base)  # untimed warm-up: decode the data and train the cached teacher
    teacher = get_teacher(base, data, resolve_device(serial.device), log=lambda s: None)

    t0 = time.perf_counter()
    print(f"cascade search: {args.trials} trials, one at a time ...", flush=True)
    trials = sorted(run_search(serial).trials, key=lambda t: t.trial_id)
    search_s = time.perf_counter() - t0
    assert all(t.finished for t in trials), trials
    overrides = [t.overrides for t in trials]

    print("plain loop over the same configurations ...", flush=True)
    torch.set_num_threads(cpus)
    t0 = time.perf_counter()
    loop_acc = []
    for i, o in enumerate(overrides):  # what a user without the search would write
        cfg = trial_prune_config(serial, o)
        loop_acc.append(run_prune(cfg, tmp / "loop" / str(i), data=data, teacher=teacher, log=lambda s: None)
                        ["accuracy"])
    loop_s = time.perf_counter() - t0

    parallel = config("parallel", cpus, 1)
    print(f"cascade search: {args.trials} trials, {cpus} at a time ...", flush=True)
    t0 = time.perf_counter()
    par_trials = run_search(parallel).trials
    parallel_s = time.perf_counter() - t0
    same = sorted(map(json.dumps, overrides)) == sorted(json.dumps(t.overrides) for t in par_trials)

    k = args.trials
    rows = [
        {"runner": "plain loop (run_prune)", "trials": k, "concurrency": 1, "wall_s": loop_s},
        {"runner": "cascade search", "trials": k, "concurrency": 1, "wall_s": search_s},
        {"runner": "cascade search", "trials": k, "concurrency": cpus, "wall_s": parallel_s},
    ]
    for r in rows:
        r["vs_loop"] = r["wall_s"] / loop_s
        r["overhead_per_trial_s"] = (r["wall_s"] - loop_s) / k
        print(f"{r['runner']:>24} x{r['concurrency']}: {r['wall_s']:7.1f} s  ({r['vs_loop']:.2f} x the loop, "
              f"{r['overhead_per_trial_s']:+.1f} s per trial)")
    Path(args.out).write_text(json.dumps({
        "config": args.config, "trials": k, "cpus": cpus, "torch": torch.__version__, "machine": platform.machine(),
        "date": time.strftime("%Y-%m-%d"), "parallel_ran_same_configs": same, "rows": rows,
        "accuracy": {"search": [t.test_accuracy for t in trials], "loop": loop_acc}}, indent=2))


if __name__ == "__main__":
    main()
