"""Every classification model in torchvision: a cascade is built and exported with masked == exported, or
the model is refused up front with one line naming the reason and the layer. Never a crash.

Random-init weights, the smallest input each model accepts, two members, two images: the sweep checks the
machinery (groups, composite BN masks, stems, heads, activations), not accuracy. The checks run in two worker
processes at one thread each (they are mostly Python, tracing the graph), when this module's tests run, not beside
the rest of the suite: there, even at idle CPU priority, they made the other tests' Ray searches about twice as slow."""
import multiprocessing
import traceback
import warnings

import pytest
import torch
import torchvision

from cascade import CascadeNet, count_flops

MODELS = torchvision.models.list_models(module=torchvision.models)
SIZES = (32, 64, 96, 160, 224)


def smallest_input(model: torch.nn.Module) -> int | None:
    """The smallest of SIZES that an eval forward accepts."""
    for s in SIZES:
        try:
            with torch.no_grad():
                model(torch.zeros(1, 3, s, s))
            return s
        except (RuntimeError, ValueError, AssertionError, IndexError):
            continue
    return None


def build(name: str):
    """(CascadeNet, input size) or (reason, None) for a refused model."""
    model = None
    try:
        with torch.device("meta"):  # the refusal needs no weights: decide it before allocating any
            meta = torchvision.models.get_model(name, weights=None, num_classes=10)
    except NotImplementedError:  # a constructor that reads tensor values (RegNet): built once, for real
        torch.manual_seed(0)
        meta = model = torchvision.models.get_model(name, weights=None, num_classes=10).eval()
    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in meta.modules()):
        with pytest.raises(ValueError, match=r"cannot prune: no BatchNorm .*'") as e:
            CascadeNet(meta, [0.5, 0.0], torch.zeros(1, 3, 32, 32))
        return str(e.value), None
    if model is None:
        torch.manual_seed(0)
        model = torchvision.models.get_model(name, weights=None, num_classes=10).eval()
    size = smallest_input(model)
    assert size is not None, f"{name}: no input size in {SIZES} works"
    try:
        return CascadeNet(model, [0.5, 0.0], torch.zeros(1, 3, size, size), budget="flops"), size
    except ValueError as e:
        msg = str(e)
        assert msg.startswith("cannot prune:") and "'" in msg and "\n" not in msg, msg  # one line, names a layer
        return msg, None


def check(name: str) -> str:
    """The outcome of one model, as the report line; AssertionError where the cascade is wrong."""
    net, size = build(name)
    if size is None:
        return f"refused: {net}"
    x = torch.randn(2, 3, size, size)
    net.train()
    with torch.no_grad():  # calibrate the member BNs on a few images, as training would
        net(x)
    net.eval()
    with torch.no_grad():
        masked = net(x)
    trained = net.export(0, fill=False).eval()  # the member as it trains and evaluates: its step masks
    with torch.no_grad():
        out = trained(x)
    spread = masked[0].std().item() + 1e-6
    assert (out - masked[0]).abs().max().item() / spread < 1e-3, name
    flops, params = count_flops(net.export(0), (3, size, size))  # the student, filled to its budget
    floor = all(int(m[0].sum()) == 1 for m in net.group_masks(net.final_masks()))  # unreachable target: the floor
    assert flops < net.base_cost[0] and (flops <= net.targets[0] or floor), name
    assert (flops, params) == net.member_cost(0)
    return f"pruned at {size}px: -{1 - flops / net.base_cost[0]:.0%} FLOPs"


def _worker_check(name: str) -> tuple[bool, str]:
    try:
        return True, check(name)
    except BaseException:  # the parent reports it as this model's failure
        return False, traceback.format_exc()


def _one_thread() -> None:
    torch.set_num_threads(1)  # two workers on two cores
    warnings.simplefilter("ignore")  # the workers' stderr is the terminal's: keep pytest's output clean


@pytest.fixture(scope="module")
def outcomes(request) -> dict[str, tuple[bool, str]]:
    """The outcome of every model this session selected, checked in two spawned workers that exit once done
    (their memory is back before the tests that follow need it)."""
    names = [item.callspec.params["name"] for item in request.session.items
             if getattr(item, "originalname", "") == "test_torchvision_model_is_pruned_or_refused"]
    with multiprocessing.get_context("spawn").Pool(2, initializer=_one_thread) as pool:
        return dict(zip(names, pool.map(_worker_check, names, chunksize=1)))


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_torchvision_model_is_pruned_or_refused(name, outcomes, record_property):
    ok, outcome = outcomes[name]
    if not ok:
        pytest.fail(f"{name}:\n{outcome}", pytrace=False)
    record_property("outcome", outcome)
