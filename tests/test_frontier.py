import random

from hypothesis import given, settings
from hypothesis import strategies as st

from search.frontier import best_at_budgets, frontier_records, pareto_front


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
    trials = [{"status": "finished", "accuracy": rng.uniform(50, 90), "flops": rng.uniform(1e6, 9e6)} for _ in range(20)]
    trials.append({"status": "stopped", "accuracy": 99.0, "flops": 1.0})   # partial budget: must not count
    trials.append({"status": "failed"})
    front = frontier_records(trials, {"accuracy": "max", "flops": "min"})
    assert all(t["status"] == "finished" for t in front)
    assert [t["flops"] for t in front] == sorted(t["flops"] for t in front)
    best = best_at_budgets(trials, [5e6, 0.5])
    assert best[1] is None and best[0]["flops"] <= 5e6
    assert best[0]["accuracy"] == max(t["accuracy"] for t in trials[:20] if t["flops"] <= 5e6)
