import random

from hypothesis import given, settings
from hypothesis import strategies as st

from search.frontier import best_at_budgets, frontier_records, hypervolume, pareto_front
from search.record import TrialRecord


def _front_2d(points):
    """An independent frontier for (accuracy max, flops min): sweep by FLOPs, keep record accuracies."""
    order = sorted(range(len(points)), key=lambda i: (points[i][1], -points[i][0]))
    out, best = [], float("-inf")
    for i in order:
        acc, flops = points[i]
        if acc > best:
            best = acc
            out.append(i)
        elif acc == best and out and points[out[-1]] == points[i]:
            out.append(i)  # an exact duplicate of a frontier point is not dominated
    return sorted(out)


pts = st.lists(st.tuples(st.integers(0, 20), st.integers(0, 20)), min_size=1, max_size=40)


@given(pts)
@settings(max_examples=300, deadline=None)
def test_pareto_front_matches_an_independent_sweep(points):
    assert sorted(pareto_front(points, ["max", "min"])) == _front_2d(points)


@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=30))
@settings(max_examples=200, deadline=None)
def test_pareto_front_is_exactly_the_non_dominated_set_in_3d(points):
    modes = ["max", "min", "min"]
    sign = [1, -1, -1]

    def dom(a, b):
        a, b = [s * x for s, x in zip(sign, a)], [s * x for s, x in zip(sign, b)]
        return all(x >= y for x, y in zip(a, b)) and a != b

    front = set(pareto_front(points, modes))
    for i, p in enumerate(points):
        assert (i in front) == (not any(dom(q, p) for q in points))


def test_only_finished_trials_reach_the_frontier():
    rng = random.Random(0)
    trials = [TrialRecord(str(i), "finished", val_accuracy=rng.uniform(50, 90), test_accuracy=rng.uniform(50, 90),
                          flops=rng.uniform(1e6, 9e6)) for i in range(20)]
    trials.append(TrialRecord("s", "stopped", val_accuracy=99.0, flops=1.0))   # partial budget: must not count
    trials.append(TrialRecord("f", "failed"))
    front = frontier_records(trials, {"val_accuracy": "max", "flops": "min"})
    assert all(t.finished for t in front)
    assert [t.flops for t in front] == sorted(t.flops for t in front)
    best = best_at_budgets(trials, [5e6, 0.5])
    assert best[1] is None and best[0].flops <= 5e6
    assert best[0].val_accuracy == max(t.val_accuracy for t in trials[:20] if t.flops <= 5e6)


def test_selection_uses_validation_where_test_disagrees():
    """Same FLOPs: b is better on validation, a on test. The frontier and best() choose b; test never selects."""
    a = TrialRecord("a", "finished", val_accuracy=80.0, test_accuracy=95.0, flops=2e6, params=1.0)
    b = TrialRecord("b", "finished", val_accuracy=90.0, test_accuracy=70.0, flops=2e6, params=1.0)
    assert [t.trial_id for t in frontier_records([a, b], {"val_accuracy": "max", "flops": "min"})] == ["b"]
    assert best_at_budgets([a, b], [3e6])[0].trial_id == "b"


def test_hypervolume_is_the_dominated_area_above_chance_below_the_teacher():
    base = dict(status="finished", base_flops=10.0, num_classes=10)  # chance 10%
    one = TrialRecord("1", val_accuracy=55.0, flops=5.0, **base)      # (10 - 5) * (55 - 10) / (10 * 90) = 0.25
    assert hypervolume([one]) == 0.25
    two = TrialRecord("2", val_accuracy=100.0, flops=9.0, **base)     # adds (10 - 9) * (100 - 55) / 900 = 0.05
    assert abs(hypervolume([one, two]) - 0.30) < 1e-12
    assert hypervolume([TrialRecord("f", "failed")]) is None


def _finished(tid, acc, flops, family=()):
    return TrialRecord(tid, "finished", name=tid, val_accuracy=acc, test_accuracy=acc, flops=flops, params=1.0,
                       base_flops=100.0, base_params=10.0, num_classes=10, ratio=0.5, family=list(family))


def test_every_member_is_a_point_and_the_frontier_gets_the_tas():
    from search.record import members

    ta = {"member": 1, "ratio": 0.2, "val_accuracy": 80.0, "test_accuracy": 79.0, "flops": 60.0, "params": 5.0,
          "fine_tuned": False, "model_uri": "models:/m-ta"}
    top = {**ta, "member": 2, "ratio": 0.0, "flops": 100.0, "val_accuracy": 81.0, "model_uri": None}
    trials = [_finished("a", 70.0, 30.0, [ta, top]), _finished("b", 75.0, 40.0)]
    pts = members(trials)
    assert [p.name for p in pts] == ["a", "a/m1", "a/m2", "b"]
    assert pts[1].member == 1 and pts[1].flops_reduction == 0.4 and pts[1].model_uri == "models:/m-ta"
    front = frontier_records(pts, {"val_accuracy": "max", "flops": "min"})
    assert [p.name for p in front] == ["a", "b", "a/m1", "a/m2"]
    # a TA widens what the search covers: the family's hypervolume beats the students' alone
    assert hypervolume(pts) > hypervolume(trials)


def test_fronts_rank_points_by_non_domination():
    from search.schedulers import fronts

    pts = [[90, 50], [80, 20], [70, 60], [60, 10], [50, 70]]  # (accuracy max, flops min)
    assert fronts(pts, ["max", "min"]) == [0, 0, 1, 0, 2]


def test_pareto_halving_stops_only_trials_dominated_by_many_at_a_rung():
    from ray.tune.schedulers import TrialScheduler

    from search.schedulers import ParetoHalving

    class T:
        def __init__(self, tid):
            self.trial_id = tid

    s = ParetoHalving(metrics=["val_accuracy", "flops"], modes=["max", "min"], time_attr="epoch_total", max_t=9,
                      grace_period=1, reduction_factor=2)
    assert sorted(s.rungs) == [1, 2, 4, 8]
    report = lambda tid, acc, flops, t=1: s.on_trial_result(None, T(tid), {  # noqa: E731
        "val_accuracy": acc, "flops": flops, "epoch_total": t})
    assert report("a", 90, 50) == TrialScheduler.CONTINUE      # the first at the rung
    assert report("b", 60, 10) == TrialScheduler.CONTINUE      # only good at low FLOPs: on the frontier, goes on
    assert report("c", 80, 60) == TrialScheduler.STOP          # a and b in a better front: 2, not under ceil(3/2)
    assert report("d", 85, 45) == TrialScheduler.CONTINUE      # on the frontier with a and b
    assert report("e", 70, 55) == TrialScheduler.STOP          # behind 3 of 5
    assert report("a", 91, 50, t=1) == TrialScheduler.CONTINUE  # between rungs: no decision
