"""bench/quality.py: rows parse strictly, the verdict selects on validation at equal epochs and at equal compute,
the allocation control keeps the cascade's widths, and a run saves its rows and resumes without redoing them."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cascade import CascadeNet, create_model

SCRIPT = Path(__file__).parents[1] / "bench" / "quality.py"


def _quality():
    spec = importlib.util.spec_from_file_location("quality", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rows_parse_and_bad_rows_are_refused():
    q = _quality()
    r = q.parse_row("cascade_2ta:no_hints@8+4")
    assert (r["method"], r["variants"], r["joint"], r["finetune"], r["tas"], r["epochs"]) == \
        ("cascade_2ta", ["no_hints"], 8, 4, 2, 12)
    p = q.parse_row("taylor@9")
    assert (p["joint"], p["finetune"], p["tas"]) == (5, 4, None)
    assert q.control_source(q.parse_row("l1:ta_teacher@16"))["name"] == "cascade_1ta@8+8"
    for bad in ("cascade_1ta@16", "l1@", "hrank@8", "l1:warp@8", "cascade_1ta:ta_teacher@4+4"):
        with pytest.raises(Exception):
            q.parse_row(bad)


def _s(row, epochs, val, acc, macs, runs=3):
    method, _, variants = row.split("@")[0].partition(":")
    return {"target": 0.83, "row": row, "method": method, "variants": variants.split("+") if variants else [],
            "epochs": epochs, "runs": runs,
            "accuracy": acc, "val_accuracy": val, "train_macs": macs}


def test_the_verdict_selects_on_validation_at_equal_epochs_and_at_equal_compute():
    q = _quality()
    summary = [
        _s("cascade_1ta@8+8", 16, val=70.0, acc=69.0, macs=100),
        _s("cascade_0ta@8+8", 16, val=69.0, acc=69.5, macs=60),     # better on test, worse on validation
        _s("l1@16", 16, val=68.0, acc=68.2, macs=30),
        _s("l1@32", 32, val=69.5, acc=69.4, macs=60),
        _s("l1@64", 64, val=70.5, acc=70.1, macs=120),              # the cheapest l1 with the cascade's MACs
        _s("taylor@64", 64, val=71.0, acc=70.6, macs=130),
        _s("taylor@128", 128, val=72.0, acc=71.0, macs=260),        # more than needed: not the comparison
        _s("l1@8", 8, val=60.0, acc=60.0, macs=15, runs=1),          # a one-run screen does not compete
        _s("l1:ta_teacher@16", 16, val=75.0, acc=75.0, macs=30),    # a control: never the verdict's peer
    ]
    v = q.verdict(summary)["0.83"]
    eq = {e["epochs"]: e for e in v["equal_epochs"]}
    assert eq[16]["cascade"] == "cascade_1ta@8+8" and eq[16]["peer"] == "l1@16"
    assert eq[16]["gap"] == pytest.approx(0.8) and eq[16]["macs_ratio"] == pytest.approx(100 / 30)
    assert 8 not in eq
    c = v["equal_compute"]
    assert (c["cascade"], c["peer"]) == ("cascade_1ta@8+8", "taylor@64") and c["gap"] == pytest.approx(-1.6)
    w = v["within_compute"]  # the best peer that spent no more than the cascade
    assert (w["peer"], w["peer_macs"]) == ("l1@32", 60) and w["gap"] == pytest.approx(69.0 - 69.4)


def test_the_verdict_compares_confirmed_rows_on_the_largest_set_of_runs_a_cascade_and_a_peer_share():
    q = _quality()

    def r(row, teacher, seed, acc=70.0):
        variants = row.split("@")[0].split(":")[1:]
        return {"row": row, "method": row.split("@")[0].split(":")[0], "variants": variants, "epochs": 16,
                "teacher": teacher, "seed": seed, "target": 0.83, "accuracy": acc, "val_accuracy": acc, "flops": 1.0,
                "train_macs": 1.0, "wall_s": 1.0, "load_avg": 1.0}

    ab, ac = (("A", 0), ("A", 1), ("B", 0)), (("A", 0), ("A", 1), ("C", 0), ("C", 1))
    rows = [r(row, t, s) for row in ("cascade_1ta@8+8", "l1@16") for t, s in ab]
    rows += [r(row, t, s) for row in ("cascade_2ta@8+8", "l1@16") for t, s in ac if t == "C" or row != "l1@16"]
    rows += [r("l1@64", "A", 0)]                                           # a screen row: one run
    # a control is no peer: the most runs of all, but only beside a cascade row
    rows += [r(row, "D", s) for row in ("cascade_0ta@8+8", "l1:ta_teacher@16") for s in range(6)]
    kept = q.comparable(rows)
    assert {x["row"] for x in kept} == {"cascade_2ta@8+8", "l1@16"}
    assert {(x["teacher"], x["seed"]) for x in kept} == set(ac)                 # cascade_1ta sits it out
    rep = {"rows": rows + [r("l1@32", t, s) for t, s in ac]}
    q.conclude(rep)
    assert rep["verdict"]["0.83"]["runs"] == ["A0", "A1", "C0", "C1"]


def test_the_allocation_control_keeps_the_cascades_widths():
    q = _quality()
    torch.manual_seed(0)
    model = create_model("vgg16_cifar", width=0.25)
    net = CascadeNet(model, [0.5], torch.zeros(1, 3, 32, 32), budget="filters")
    kept = {g.root: max(1, g.size // (2 + i % 3)) for i, g in enumerate(net.groups)}
    scores = q.widths_scores(model, kept, (3, 32, 32))
    by_filters = CascadeNet(model, [1 - sum(kept.values()) / net.total_filters], torch.zeros(1, 3, 32, 32),
                            budget="filters")
    with torch.no_grad():
        by_filters.scores.copy_(scores[None])
    got = {g.root: int(m[0].sum()) for g, m in zip(by_filters.groups, by_filters.group_masks(by_filters.step_masks()))}
    assert got == kept


def test_processes_share_one_json_and_a_file_of_other_settings_is_refused(tmp_path):
    """Two runs (one per teacher, say) append to one JSON under a lock, each re-reading it first, so neither
    loses the other's rows; a file written with other settings is refused, not overwritten."""
    import multiprocessing as mp

    q = _quality()
    out, settings = tmp_path / "q.json", {"width": 0.25, "data": "cifar10-jpg"}
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_append_rows, args=(str(out), settings, t)) for t in ("A", "B")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    rows = json.loads(out.read_text())["rows"]
    assert sorted((r["teacher"], r["seed"]) for r in rows) == [(t, s) for t in "AB" for s in range(20)]
    before = out.read_text()
    with pytest.raises(SystemExit, match="width: 0.25 there, 1.0 here"):
        q.merge_saved(out, {**settings, "width": 1.0}, lambda rep: rep["rows"].clear())
    assert out.read_text() == before


def _append_rows(out, settings, teacher):
    q = _quality()
    for seed in range(20):
        row = {"teacher": teacher, "row": "l1@16", "target": 0.83, "seed": seed}
        q.merge_saved(Path(out), settings, lambda rep: rep["rows"].append(row))


@pytest.mark.slow
def test_a_bench_run_saves_rows_and_resumes_without_redoing_them(tmp_path):
    from test_data import _image_folder

    _image_folder(tmp_path / "data", {"train": 40, "test": 10}, (32, 32))
    torch.manual_seed(0)
    teacher = tmp_path / "t.pt"
    torch.save(create_model("vgg16_cifar", num_classes=2, width=0.125).state_dict(), teacher)
    out = tmp_path / "q.json"
    argv = [sys.executable, str(SCRIPT), "--data", str(tmp_path / "data"), "--teacher", f"A={teacher}",
            "--width", "0.125", "--train-subset", "48", "--targets", "0.5", "--workdir", str(tmp_path / "w"),
            "--out", str(out), "--set", "data.batch_size=16", "--rows", "cascade_1ta@1+1", "l1@2",
            "l1:cascade_widths@2"]
    first = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    rep = json.loads(out.read_text())
    assert [r["row"] for r in rep["rows"]] == ["cascade_1ta@1+1", "l1@2", "l1:cascade_widths@2"]
    assert all(r["train_macs"] > 0 and 0.5 <= r["flops_reduction"] < 0.55 for r in rep["rows"])
    c, p = rep["rows"][0], rep["rows"][1]
    # per image, a joint step costs 3 x 2 full-width members + the teacher's forward (7 units), a peer's step
    # 3 x its half-size student + the teacher (2.5): over 1 + 1 epochs against 2, about 1.9x
    assert 1.5 < c["train_macs"] / p["train_macs"] < 2.5
    assert rep["verdict"] == {} and out.with_suffix(".png").exists()  # one run a row: a screen, no verdict
    again = subprocess.run(argv + ["taylor@2", "--seeds", "0", "1"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    rep2 = json.loads(out.read_text())
    assert [(r["row"], r["seed"]) for r in rep2["rows"]] == [
        ("cascade_1ta@1+1", 0), ("l1@2", 0), ("l1:cascade_widths@2", 0), ("taylor@2", 0),
        ("cascade_1ta@1+1", 1), ("l1@2", 1), ("l1:cascade_widths@2", 1), ("taylor@2", 1)]
    assert rep2["rows"][0] == rep["rows"][0]  # kept, not rerun
    v = rep2["verdict"]["0.5"]
    assert v["runs"] == ["A0", "A1"] and v["equal_epochs"][0]["epochs"] == 2
    other = tmp_path / "t2.pt"  # another teacher under the name whose rows the file holds: refused
    torch.save(create_model("vgg16_cifar", num_classes=2, width=0.125).state_dict(), other)
    before = out.read_text()
    wrong = subprocess.run(argv[:5] + [f"A={other}"] + argv[6:],
                           capture_output=True, text=True, timeout=600)
    assert wrong.returncode != 0 and "is not the teacher A" in wrong.stderr, wrong.stderr[-2000:]
    assert out.read_text() == before


def _search_bench():
    spec = importlib.util.spec_from_file_location("search_quality", SCRIPT.with_name("search_quality.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_search_benchmark_compares_at_the_least_compute_any_search_spent():
    q = _search_bench()

    def row(variant, seed, points):
        return {"variant": variant, "seed": seed, "curve": [
            {"train_tmacs": c, "test_hypervolume": h, "student_test_hypervolume": s} for c, h, s in points]}

    rows = [row("family", 0, [(1.0, 0.2, 0.1), (2.0, 0.5, 0.3), (4.0, 0.6, 0.4)]),
            row("peers", 0, [(1.5, 0.4, 0.4), (3.0, 0.45, 0.45)]),            # spent the least: the budget is 3
            row("pareto", 0, [(0.5, 0.3, 0.3), (1.5, 0.6, 0.5), (5.0, 0.7, 0.6)]),
            row("family_2ta", 0, [(2.5, 0.65, 0.35), (6.0, 0.8, 0.5)])]
    s = q.summarize(rows)
    assert s["budget_tmacs"] == 3.0
    v = s["variants"]
    assert v["family"]["test_hypervolume"] == 0.5 and v["students"]["test_hypervolume"] == 0.3
    assert v["peers"]["test_hypervolume"] == 0.45 and v["pareto"]["test_hypervolume"] == 0.6
    assert s["pareto_compute_to_reach_family"] == [1.5 / 4.0]   # family's final 0.6, reached at 1.5 of its 4.0
    assert v["family_2ta"]["test_hypervolume"] == 0.65 and v["students_2ta"]["test_hypervolume"] == 0.35
    two = q.overrides("family_2ta", "cpu", 8)
    assert two["space.num_tas"] == 2 and two["prune.schedule.fine_tune"] == "all"
    mean = q.mean_curve([rows[0]["curve"], rows[2]["curve"]])   # family ends at 4.0: nothing after it
    assert [(c["train_tmacs"], c["test_hypervolume"]) for c in mean] == [
        (0.5, 0.15), (1.0, 0.25), (1.5, 0.4), (2.0, 0.55), (4.0, 0.6)]
    assert q.overrides("grid", "cpu", 8)["sampler.name"] == "grid"
    assert q.overrides("peers", "cpu", 8)["num_trials"] == 16


def test_the_search_benchmark_on_cifar_needs_the_data_and_the_converged_teacher():
    r = subprocess.run([sys.executable, str(SCRIPT.with_name("search_quality.py")), "--mode", "cifar"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--mode cifar needs --data and --teacher" in r.stderr, r.stderr[-2000:]
