import optuna
import pytest

from cascade.config import ConfigError
from search.sampling import sample_space
from spaces import member_ratios, parse_space

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_paper_placement_matches_the_paper():
    assert member_ratios(0.8, 3, "paper") == pytest.approx([0.8, 0.8 / 1.5, 0.32, 0.0])
    assert member_ratios(0.6, 0) == [0.6]
    assert member_ratios(0.6, 1, "geometric") == [0.6, 0.0]


@pytest.mark.parametrize("placement", ["paper", "even", "geometric", "free"])
@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_every_placement_is_strictly_decreasing_to_zero(placement, n):
    r = member_ratios(0.7, n, placement, free=[0.5] * (n - 1) if placement == "free" else None)
    assert len(r) == n + 1 and r[0] == 0.7 and r[-1] == 0.0
    assert all(a > b for a, b in zip(r, r[1:]))


def test_conditional_parameters_get_distinct_names_per_branch():
    space = parse_space({"num_tas": {"low": 0, "high": 3}, "student_ratio": {"low": 0.3, "high": 0.8},
                         "placement": {"choices": ["paper", "free"]}, "tau": 4.0})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    names = set()
    for _ in range(40):
        trial = study.ask()
        overrides, logged = sample_space(trial, space)
        n = logged["num_tas"]
        assert len(overrides["cascade.ratios"]) == n + 1 and overrides["loss.tau"] == 4.0
        assert ("placement" in trial.params) == (n >= 2)
        free = {k for k in trial.params if k.startswith("free_fraction")}
        assert free == ({f"free_fraction_{j}_of_{n}" for j in range(1, n)} if trial.params.get("placement") == "free"
                        else set())
        names |= free
        study.tell(trial, 0.0)
    assert {"free_fraction_1_of_2", "free_fraction_2_of_3"} <= names


def test_a_peer_branch_draws_no_ladder_and_no_cascade_only_parameter():
    space = parse_space({"method": {"choices": ["cascade", "l1", "taylor"]}, "num_tas": {"low": 1, "high": 3},
                         "student_ratio": {"low": 0.3, "high": 0.8}, "score_lr": {"low": 1e-3, "high": 1e-2},
                         "optim.score_optimizer": {"choices": ["rmsprop", "adam"]}, "tau": {"low": 2.0, "high": 8.0}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        overrides, logged = sample_space(trial, space)
        method = overrides["method"]
        seen.add(method)
        cascade = method == "cascade"
        assert ({"num_tas", "score_lr", "optim.score_optimizer"} <= set(trial.params)) == cascade
        assert not cascade or len(overrides["cascade.ratios"]) >= 2
        assert cascade or overrides["cascade.ratios"] == [logged["student_ratio"]]
        assert cascade or "optim.score_lr" not in overrides
        assert "tau" in trial.params and logged["method"] == method
        study.tell(trial, 0.0)
    assert seen == {"cascade", "l1", "taylor"}


@pytest.mark.parametrize("space,field", [
    ({"method": {"choices": ["cascade", "hrank"]}}, "space.method"),
    ({"tau": {"low": 5.0, "high": 2.0}}, "space.tau"),
    ({"tau": {"low": 0.0, "high": 2.0, "log": True}}, "space.tau.low"),
    ({"tau": {"lo": 1.0, "high": 2.0}}, "space.tau.lo"),
    ({"tau": {"choices": []}}, "space.tau.choices"),
    ({"tau": {"low": "a", "high": 2.0}}, "space.tau.low"),
    ({"temperature": 3.0}, "space.temperature"),
    ({"num_tas": {"low": -1, "high": 2}}, "space.num_tas"),
    ({"student_ratio": {"low": 0.5, "high": 1.5}}, "space.student_ratio"),
    ({"placement": {"choices": ["paper", "zigzag"]}}, "space.placement"),
])
def test_bad_spaces_name_the_yaml_path(space, field):
    with pytest.raises(ConfigError) as e:
        parse_space(space)
    assert e.value.field == field
