"""One cascade run: build, joint phase, student fine-tuning with teacher swaps, export.

``prune_epochs`` is a generator that yields one metrics dict per epoch (so a CLI prints them and a Ray trial
reports them) and returns the final result dict. It checkpoints every epoch into ``out_dir`` and, started
again on the same ``out_dir``, resumes from the last checkpoint. Every phase trains through the same
``engine.Step`` and ``engine.train_epoch`` as the teacher and the benchmark's peers.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generator, Iterator

import torch
import torch.nn as nn

from .config import PruneConfig, to_dict
from .data import DataBundle, default_cache_dir, load_data
from .engine import (CheckpointError, Step, autocast, evaluate, format_seconds, load_checkpoint, prepare,
                     resolve_device, restarts, save_atomic, sgd, train_epoch)
from .flops import count_flops
from .losses import HintPlan, cascade_loss, member_loss, member_weights
from .masks import GradientMoments, TaylorSaliency, jaccard, spearman
from .member_ops import main_output
from .members import CascadeNet
from .peers import TAYLOR_BATCHES, peer_scores, prunable_copy, taylor_gradients
from .teacher import get_teacher

__all__ = ["prune_epochs", "run_prune", "load_prune_data", "format_epoch"]

CHECKPOINT = "checkpoint.pt"
# The distance a score may travel over the joint phase when ``optim.score_lr`` is None (the paper gives no score
# lr): RMSProp moves a score by about its lr per step, so lr = SCORE_TRAVEL / joint steps, and the masks move as
# far in a 4-epoch trial as in the paper's 80 epochs. Scores start as ranks in (0, 1]; 0.3 lets a filter cross
# about a third of its layer's ranking. A constant lr would tie the masks' travel to the run's length.
SCORE_TRAVEL = 0.3


def load_prune_data(cfg: PruneConfig) -> DataBundle:
    d = cfg.data
    return load_data(name=d.name, root=d.root, download=d.download, image_size=d.image_size,
                     train_subset=d.train_subset, test_subset=d.test_subset, val_fraction=d.val_fraction,
                     seed=cfg.seed if d.split_seed is None else d.split_seed, workers=d.workers,
                     cache_dir=cfg.cache_dir)


def run_prune(cfg: PruneConfig, out_dir: str | Path, *, log: Callable[[str], None] = print,
              on_epoch: Callable[[dict], None] | None = None, **kw) -> dict:
    """Run ``prune_epochs`` to the end, printing its plan and one line per epoch (with an ETA); returns the
    result dict. ``cascade prune`` and the search's trials both run through here."""
    gen = prune_epochs(cfg, out_dir, log=log, **kw)
    while True:
        try:
            m = next(gen)
        except StopIteration as stop:
            return stop.value
        log(format_epoch(m))
        if on_epoch:
            on_epoch(m)


def format_epoch(m: dict) -> str:
    """``[joint 3/80] loss 1.2345  m0 61.20%  m1 70.05%  (41.2s, ETA 1h02m)``."""
    accs = "  ".join(f"{k.split('/')[1]} {m[k]:.2f}%" for k in sorted(m) if k.startswith("val_acc/m"))
    teacher = f"  teacher {m['teacher']}" if "teacher" in m else ""
    eta = f", ETA {format_seconds(m['eta_s'])}" if m.get("eta_s") else ""
    return (f"[{m['phase']} {m['epoch']}/{m['epochs']}] loss {m['loss']:.4f}  {accs}{teacher}  "
            f"({m['epoch_time']:.1f}s{eta})")


@contextmanager
def taps(model: nn.Module, names: list[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Forward hooks that store the outputs of the named modules, removed on exit (a module holding them
    could not be pickled). A copy: the output itself can be overwritten by a later in-place op (VGG's
    ``ReLU(inplace=True)`` right after a tapped BatchNorm), and the hint would compare a rectified map."""
    store: dict[str, torch.Tensor] = {}
    hooks = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: store.__setitem__(n, o.clone()))
             for n in names]
    try:
        yield store
    finally:
        for h in hooks:
            h.remove()


@dataclass
class RunState:
    """What a run's checkpoint holds: where the run is, what it has measured, and what to resume from."""
    phase: str                                  # joint | finetune; a peer: distill | finetune
    epoch: int = 0                              # epochs done in the phase
    history: list[dict] = field(default_factory=list)  # one metrics dict per epoch
    member_val: list[float] | None = None       # each member's validation accuracy after the joint phase
    member_test: list[float] | None = None      # (a peer: its student as pruned); test: reported only
    member_stats: list[dict] | None = None      # CascadeNet.member_stats once the masks froze
    start_masks: torch.Tensor | None = None     # (N, F) where the masks started: how far they learn
    start_scores: torch.Tensor | None = None
    pretrained_val_acc: float | None = None
    setup_macs: int = 0                         # training MACs before the first epoch (the Taylor peer's gradient)
    student_val_acc: float | None = None        # the exported student's last validation accuracy
    teacher_pos: int | None = None              # its current teacher's position in the ladder
    saved: dict[str, Any] = field(default_factory=dict)  # state_dicts: net, rng, optimizers, schedulers, student
    config: dict | None = None                  # what the run trains (to_dict less RUN_ONLY): a resume must match

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass
class _Run:
    """What one run holds from its build to its export."""
    cfg: PruneConfig
    out: Path
    data: DataBundle
    device: torch.device
    teacher: nn.Module
    teacher_acc: float
    net: CascadeNet
    state: RunState
    steps: int
    generator: torch.Generator
    compile: bool
    teacher_flops: int  # the frozen teacher's MACs per image (its forward is part of every training step)

    @property
    def ckpt(self) -> Path:
        return self.out / CHECKPOINT

    def save(self, **parts) -> None:
        self.state.saved.update(net=self.net.state_dict(), rng=self.generator.get_state(), **parts)
        self.state.config = _trained(self.cfg)
        save_atomic(self.state.as_dict(), self.ckpt)


def prune_epochs(cfg: PruneConfig, out_dir: str | Path, *, data: DataBundle | None = None,
                 teacher: tuple[nn.Module, float] | None = None, log: Callable[[str], None] = print,
                 peer_scores: torch.Tensor | None = None) -> Generator[dict, None, dict]:
    """``peer_scores``: a one-shot peer's (F,) filter scores instead of its method's importance (controls such
    as a peer pruned to given per-layer widths)."""
    out = Path(out_dir)
    done = _finished(cfg, out)
    if done is not None:
        log(f"{out} holds this run's result already (result.json, student.pt): nothing to do")
        return done
    run = _build(cfg, out, data, teacher, log, peer_scores)
    log(_plan(run))
    tuned: dict[int, nn.Module] = {}
    if cfg.method == "cascade":
        yield from _joint_phase(run)
        student = yield from _finetune_phase(run)
        tuned = yield from _member_phases(run)
    else:
        student = yield from _peer_phases(run)
    return _export(run, student, tuned)


def _finished(cfg: PruneConfig, out: Path) -> dict | None:
    """The result of a finished run of this config in ``out`` (a rerun, or a trial retried after its export)."""
    try:
        result = json.loads((out / "result.json").read_text())
    except (OSError, ValueError):
        return None
    return result if result.get("config") == to_dict(cfg) and (out / "student.pt").exists() else None


def _build(cfg: PruneConfig, out: Path, data: DataBundle | None, teacher, log, peer_scores=None) -> _Run:
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    if data is None:
        log(f"loading {cfg.data.name}{f' from {cfg.data.root}' if cfg.data.root else ''} ...")
        data = load_prune_data(cfg)
    t_model, t_acc = teacher or get_teacher(cfg, data, device, log)
    out.mkdir(parents=True, exist_ok=True)  # only once data and teacher are known good: bad input writes nothing
    base = copy.deepcopy(t_model).cpu().float()  # the pretrained weights seed every member
    for p in base.parameters():
        p.requires_grad_(True)
    peer = cfg.method != "cascade"  # a one-shot peer prunes to the student's ratio; the TAs' are unused
    net = CascadeNet(base, cfg.cascade.ratios[:1] if peer else cfg.cascade.ratios, torch.zeros(2, *data.input_size),
                     score_init=cfg.cascade.score_init,
                     hint_layers=cfg.loss.hint_layers if cfg.loss.lambda_h > 0 else 0,
                     route_scores=cfg.cascade.route_scores, budget=cfg.cascade.budget, round_to=cfg.cascade.round_to,
                     prune_stem=cfg.cascade.prune_stem)
    net = prepare(net, device, channels_last=False)
    if cfg.compile:  # one compile cache for every run of this cache dir (the trials of a search share it)
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(cfg.cache_dir or default_cache_dir()) / "inductor"))
    run = _Run(cfg, out, data, device, t_model, t_acc, net,
               RunState("distill" if peer else "joint"),
               max(1, len(data.train) // cfg.data.batch_size), torch.Generator().manual_seed(cfg.seed), cfg.compile,
               count_flops(t_model, data.input_size)[0])
    if run.ckpt.exists():
        stored = load_checkpoint(run.ckpt)
        fields = {f.name for f in dataclasses.fields(RunState)}
        if not isinstance(stored, dict) or set(stored) - fields or "phase" not in stored:
            raise CheckpointError(f"checkpoint {str(run.ckpt)!r} was written by another version of cascade (keys "
                                  f"{sorted(set(stored) - fields) if isinstance(stored, dict) else type(stored)}); "
                                  f"delete it to start this run from scratch")
        run.state = RunState(**stored)
        now = _trained(cfg)
        if run.state.config is not None and run.state.config != now:
            diff = sorted(k for k in set(now) | set(run.state.config) if now.get(k) != run.state.config.get(k))
            raise CheckpointError(f"checkpoint {str(run.ckpt)!r} is a run of another config (it differs in "
                                  f"{', '.join(diff)}); use another output directory, or delete it to start over")
        net.load_state_dict(run.state.saved["net"])
        run.generator.set_state(run.state.saved["rng"])
        log(f"resuming from {run.ckpt}: {run.state.phase} phase, {run.state.epoch} epochs done")
    elif peer:
        scores = _peer_scores(run) if peer_scores is None else peer_scores.to(device)
        with torch.no_grad():
            net.scores.copy_(scores[None])
    return run


RUN_ONLY = ("device", "cache_dir", "compile", "compile_mode", "onnx", "data.workers")  # how, not what, a run trains


def _trained(cfg: PruneConfig) -> dict:
    """The config as flat dotted keys, less those a resumed run may change (``RUN_ONLY``)."""
    def flat(d: dict, pre: str = "") -> dict:
        return {k2: v2 for k, v in d.items()
                for k2, v2 in (flat(v, f"{pre}{k}.") if isinstance(v, dict) else {f"{pre}{k}": v}).items()}
    return {k: v for k, v in flat(to_dict(cfg)).items() if k not in RUN_ONLY}


def _epoch_macs(run: _Run, phase: str) -> float:
    """Planned MACs of one epoch of ``phase`` (training and its validation pass), for the ETA: a joint epoch
    runs every member at full width; a distill epoch the student (at its budget) and a full-size teacher."""
    cfg, net, b = run.cfg, run.net, run.net.base_cost[0]
    images, val = run.steps * cfg.data.batch_size, len(run.data.val)
    if phase == "joint":
        return images * (3 * net.n * b + run.teacher_flops) + val * net.n * b
    s = b * (1 - cfg.cascade.ratios[0]) if cfg.cascade.budget == "flops" else b * (1 - cfg.cascade.ratios[0]) ** 2
    return images * (3 * s + run.teacher_flops) + val * s


def _remaining_macs(run: _Run) -> float:
    """The planned MACs of the epochs still to run, over every phase left."""
    j, f = run.cfg.schedule.joint_epochs, run.cfg.schedule.finetune_epochs
    first = "joint" if run.cfg.method == "cascade" else "distill"
    phases = [(first, j), ("finetune", f)] + [(f"finetune_m{m}", f) for m in _tuned_members(run)]
    names = [p for p, _ in phases]
    st = run.state
    at = names.index(st.phase) if st.phase in names else len(names)
    return sum((n - (st.epoch if i == at else 0)) * _epoch_macs(run, "joint" if p == "joint" else "finetune")
               for i, (p, n) in enumerate(phases) if i >= at)


def _eta(run: _Run) -> float | None:
    """Seconds left: the remaining planned MACs at this run's measured seconds per MAC."""
    h = run.state.history
    spent = sum(e["train_macs"] + e["eval_macs"] for e in h)
    return _remaining_macs(run) * sum(e["epoch_time"] for e in h) / spent if spent else None


def _plan(run: _Run) -> str:
    cfg, net = run.cfg, run.net
    j, f = cfg.schedule.joint_epochs, cfg.schedule.finetune_epochs
    tuned = _tuned_members(run)
    what = (f"cascade of {net.n} members (ratios {', '.join(f'{k:g}' for k in net.ratios)}), {j} joint + {f} "
            f"fine-tune epochs" + (f" (and {f} for each of {len(tuned)} TAs)" if tuned else "")
            if cfg.method == "cascade" else
            f"one-shot {cfg.method} peer (ratio {net.ratios[0]:g}), {j} + {f} epochs of KD")
    line = (f"plan: {what}; {len(run.data.train)} training images, batch {cfg.data.batch_size} "
            f"({run.steps} steps an epoch) on {run.device}; about {_remaining_macs(run) / 1e12:.1f} TMACs")
    if run.device.type == "cpu" and _remaining_macs(run) > 2e14:  # hours on a few cores
        line += ("\n  that is hours on a CPU; for a first look: --set model.width=0.25 --set data.train_subset=10000 "
                 "--set schedule.joint_epochs=4 --set schedule.finetune_epochs=4 (or run it on a GPU)")
    return line


def _peer_scores(run: _Run) -> torch.Tensor:
    """The peer's one-shot importance of every filter (``cascade.peers``); the Taylor gradient's training MACs
    (forward and backward of the model, the teacher's forward) are counted into the run."""
    cfg = run.cfg
    model = prunable_copy(run.teacher).to(run.device)
    if cfg.method == "taylor":
        taylor_gradients(model, run.teacher, run.data, run.device, tau=cfg.loss.tau, lambda_kd=cfg.loss.lambda_kd,
                         batch_size=cfg.data.batch_size, seed=cfg.seed)
        run.state.setup_macs = TAYLOR_BATCHES * cfg.data.batch_size * (3 * run.net.base_cost[0] + run.teacher_flops)
    return peer_scores(cfg.method, run.net, model).to(run.device)


def score_lr(cfg: PruneConfig, steps_per_epoch: int) -> float:
    """The scores' learning rate: ``optim.score_lr``, or by default scaled to the joint phase's length."""
    if cfg.optim.score_lr is not None:
        return cfg.optim.score_lr
    mean_factor = 0.5 if cfg.optim.score_schedule == "cosine" else 1.0  # a cosine to 0 averages half its peak
    return SCORE_TRAVEL / (steps_per_epoch * cfg.schedule.joint_epochs * mean_factor)


def _lr_span(cfg: PruneConfig, phase: str) -> tuple[int, int]:
    """(epochs the phase's lr schedule spans, the epoch it starts at). ``optim.lr_schedule: phases``: each phase
    its own cycles, from the peak; ``run``: one schedule over both, the fine-tuning continuing the first phase's
    (the cascade's joint phase, a peer's first ``distill`` phase of as many epochs)."""
    j, f = cfg.schedule.joint_epochs, cfg.schedule.finetune_epochs
    first = phase in ("joint", "distill")
    if cfg.optim.lr_schedule == "run":
        return j + f, 0 if first else j
    return (j if first else f), 0


def _optimizers(model: nn.Module, cfg: PruneConfig, steps_per_epoch: int,
                ) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer | None]:
    """SGD (Nesterov) on weights, BN and heads; the configured optimizer on the filter scores."""
    o = cfg.optim
    scores = [model.scores] if isinstance(model, CascadeNet) else []
    weights = [p for p in model.parameters() if p.requires_grad and all(p is not s for s in scores)]
    opt_w = sgd(weights, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.nesterov)
    if not scores:
        return opt_w, None
    if cfg.cascade.score_signal == "taylor":  # the scores are set from the gradient, not stepped
        return opt_w, None
    opt_s = {"rmsprop": torch.optim.RMSprop, "sgd": torch.optim.SGD, "adam": torch.optim.Adam}[o.score_optimizer]
    return opt_w, opt_s(scores, lr=score_lr(cfg, steps_per_epoch))


def _joint_phase(run: _Run) -> Generator[dict, None, None]:
    """All members, shared weights, BNs, heads and scores train together; masks follow the scores every step."""
    cfg, net, state = run.cfg, run.net, run.state
    opt_w, opt_s = _optimizers(net, cfg, run.steps)
    sched = restarts(opt_w, run.steps, cfg.optim.restart_epochs, cfg.optim.restart_decay, *_lr_span(cfg, "joint"))
    scheds = [sched]
    if cfg.optim.score_schedule == "cosine" and opt_s:  # to 0 at the last joint step: masks settle before export
        scheds.append(torch.optim.lr_scheduler.CosineAnnealingLR(opt_s, T_max=run.steps * cfg.schedule.joint_epochs))
    saliency = None
    if cfg.cascade.score_signal == "taylor":
        kind = "flops" if cfg.cascade.budget == "filters" else cfg.cascade.budget
        cost = net.cost_model.granularity(net.sizes, kind)[net.group_of].float().clamp_min(1.0)
        saliency = TaylorSaliency(net.scores.detach(), cost if cfg.cascade.budget != "filters" else
                                  torch.ones_like(cost), warmup=run.steps)
    if state.phase == "joint" and "opt_w" in state.saved:
        opt_w.load_state_dict(state.saved["opt_w"])
        if opt_s:
            opt_s.load_state_dict(state.saved["opt_s"])
        if saliency:
            saliency.load_state_dict(state.saved["saliency"])
        for sc, sd in zip(scheds, state.saved["sched"]):
            sc.load_state_dict(sd)
    lo = cfg.loss
    weights = member_weights(net.n, lo.student_weight)
    with taps(run.teacher, net.hint_names) as t_store:
        def loss_fn(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
            with autocast(run.device):
                with torch.no_grad():
                    t_logits = main_output(run.teacher(x))
                logits, feats = net(x, with_features=True) if net.hint_names else (net(x), None)
                return cascade_loss(logits, y, t_logits, tau=lo.tau, lambda_kd=lo.lambda_kd, lambda_h=lo.lambda_h,
                                    feats=feats, teacher_feats=[t_store[k] for k in net.hint_names],
                                    weights=weights)

        rescale = own_grads_in_full(net, weights) if lo.own_grads == "full" else None
        moments = GradientMoments()

        def after_backward() -> None:
            moments.add(net.scores.grad)  # the routed gradient each member's scores receive
            if saliency:  # the Parameter itself: a write through .data leaves the eval masks' cache stale
                saliency.update(net.scores, net.scores.grad)
            if rescale:
                rescale()

        step = Step(loss_fn, [opt_w, opt_s], scheds, compile=run.compile, compile_mode=run.cfg.compile_mode,
                    after_backward=after_backward)
        prev = net.eval().step_masks().clone()
        if state.start_masks is None:  # where the masks start (the L1 ranks by default): how far they learn
            state.start_masks, state.start_scores = prev.cpu(), net.scores.detach().cpu().clone()
        base = net.base_cost[0]  # every member computes at full width in the joint phase: masks save no MACs
        while state.phase == "joint" and state.epoch < cfg.schedule.joint_epochs:
            t0 = time.time()
            net.train()
            moments.__init__()
            terms = train_epoch(step, run.data.train, run.device, batch_size=cfg.data.batch_size,
                                generator=run.generator, name="joint", epoch=state.epoch + 1)
            state.epoch += 1
            accs = evaluate(net, run.data.val, run.device)  # eval mode: the trained masks, computed once
            masks = net.step_masks().clone()
            churn = ((masks != prev).sum(1) / net.total_filters).tolist()
            kept = (masks.sum(1) / net.total_filters).tolist()
            overlap = jaccard(masks.cpu(), state.start_masks).tolist()
            rank_corr = spearman(net.scores.detach().cpu(), state.start_scores).tolist()
            snr = moments.log10_snr()
            prev = masks
            metrics = {"phase": "joint", "epoch": state.epoch, "epochs": cfg.schedule.joint_epochs,
                       "lr": sched.get_last_lr()[0], "epoch_time": time.time() - t0,
                       "train_macs": run.steps * cfg.data.batch_size * (3 * net.n * base + run.teacher_flops),
                       "eval_macs": len(run.data.val) * net.n * base, **terms}
            for i in range(net.n):
                metrics.update({f"val_acc/m{i}": accs[i], f"churn/m{i}": churn[i], f"kept/m{i}": kept[i],
                                f"mask_jaccard_start/m{i}": overlap[i], f"score_spearman_start/m{i}": rank_corr[i]})
                if snr:
                    metrics[f"grad_log10_snr/m{i}"] = snr[i]
            state.member_val = accs
            if state.epoch == cfg.schedule.joint_epochs:
                state.phase, state.epoch = "finetune", 0
            state.history.append(metrics)
            metrics.update(epoch_total=len(state.history), eta_s=_eta(run))
            run.save(opt_w=opt_w.state_dict(), opt_s=opt_s.state_dict() if opt_s else None,
                     saliency=saliency.state_dict() if saliency else None, sched=[sc.state_dict() for sc in scheds])
            yield metrics


def own_grads_in_full(net: CascadeNet, weights: list[float]) -> Callable[[], None]:
    """After backward of sum_i w_i L_i: a member's own parameters (BNs, stem, head) see only L_i, so divide
    their gradient by w_i; the shared weights keep the weighted sum (a step size independent of N)."""
    own = net.member_parameters()
    inv_w = torch.tensor([[1.0 / w] for w in weights], device=net.scores.device)  # (N, 1), made once

    def rescale() -> None:
        for p in own:
            if p.grad is not None:
                p.grad.view(net.n, -1).mul_(inv_w)  # member-major: row i is member i's
    return rescale


def _hint_plans(run: _Run, teacher_member: int | None, student_member: int = 0) -> list[HintPlan] | None:
    """For an exported member being fine-tuned (filled to its budget; the student by default) and one ladder
    teacher (member j as trained, or None for the pretrained model): the channels each keeps at every hint
    point, as index tensors on the device (made once, not per step)."""
    net = run.net
    if not net.hint_names:
        return None
    plans = []
    for _, bn in net.hint_points:
        full = net.body.get_submodule(bn).num_features
        t_kept = torch.arange(full) if teacher_member is None else net.kept_positions(teacher_member, bn, fill=False)
        plans.append(HintPlan(net.kept_positions(student_member, bn), t_kept, full, run.device))
    return plans


@dataclass
class _Teacher:
    """A frozen teacher of the student's fine-tuning: the model, its validation accuracy, its hint plans."""
    name: str
    model: nn.Module
    val_acc: float
    plans: list[HintPlan] | None
    flops: int  # MACs per image of its forward


def _finetune_phase(run: _Run) -> Generator[dict, None, nn.Module]:
    """The student is exported now (mask frozen and filled to its budget, physically smaller, so fine-tuning is
    cheap and trains the filters the fill added) and trained with KD from a ladder of frozen teachers: the TAs
    exported as they trained and the pretrained model, ordered by validation accuracy."""
    net, state = run.net, run.state
    net.eval()
    if state.member_test is None:  # the masked members at the end of the joint phase
        state.member_test, state.member_stats = evaluate(net, run.data.test, run.device), net.member_stats()
    student = prepare(net.export(0), run.device)
    tuned = _tuned_members(run)
    return (yield from _distill(run, student, _ladder(run, 0), "finetune", run.cfg.schedule.finetune_epochs,
                                state.member_val[0], next_phase=f"finetune_m{tuned[0]}" if tuned else None))


def _tuned_members(run: _Run) -> list[int]:
    """The TAs that get their own fine-tuning (``schedule.fine_tune: all``): the pruned ones (ratio > 0)."""
    if run.cfg.schedule.fine_tune != "all":
        return []
    return [j for j in range(1, run.net.n) if run.net.ratios[j] > 0]


def _ladder(run: _Run, member: int) -> list[_Teacher]:
    """Member ``member``'s fine-tuning teachers: the members above it as they trained, and the pretrained model."""
    net, teachers = run.net, []
    for j in range(member + 1, net.n):
        ta = net.export(j, fill=False)
        teachers.append(_Teacher(f"m{j}", prepare(ta, run.device).eval().requires_grad_(False),
                                 run.state.member_val[j], _hint_plans(run, j, member),
                                 count_flops(ta, run.data.input_size)[0]))
    return teachers + [_pretrained(run, member)]


def _member_phases(run: _Run) -> Generator[dict, None, dict[int, nn.Module]]:
    """``schedule.fine_tune: all``: each pruned TA, exported and filled to its budget, fine-tuned like the student
    (its own phase ``finetune_m<j>`` of ``finetune_epochs``, its ladder the members above it and the teacher)."""
    tuned, out = _tuned_members(run), {}
    for k, j in enumerate(tuned):
        phase = f"finetune_m{j}"
        model = prepare(run.net.export(j), run.device)
        if run.state.phase != phase and f"done/{phase}" in run.state.saved:  # done before a restart
            model.load_state_dict(run.state.saved[f"done/{phase}"])
            out[j] = model
            continue
        out[j] = yield from _distill(run, model, _ladder(run, j), phase, run.cfg.schedule.finetune_epochs,
                                     run.state.member_val[j], member=j,
                                     next_phase=f"finetune_m{tuned[k + 1]}" if k + 1 < len(tuned) else None)
    return out


def _peer_phases(run: _Run) -> Generator[dict, None, nn.Module]:
    """A one-shot peer: its student exported at once from the importance scores (``_build``), then trained by KD
    from the pretrained model for as many epochs as the cascade trains, in two phases of the joint and the
    fine-tune lengths (``optim.lr_schedule`` treats them as the cascade's two phases)."""
    net, state, data = run.net.eval(), run.state, run.data
    student = prepare(net.export(0), run.device)
    if state.member_stats is None:  # the student as pruned, before any training
        state.member_stats = net.member_stats()
        state.member_test = [float(evaluate(student, data.test, run.device))]
        state.member_val = [float(evaluate(student, data.val, run.device))]
    teachers = [_pretrained(run)]
    j, f = run.cfg.schedule.joint_epochs, run.cfg.schedule.finetune_epochs
    student = yield from _distill(run, student, teachers, "distill", j, state.member_val[0],
                                  next_phase="finetune")
    return (yield from _distill(run, student, teachers, "finetune", f, state.member_val[0], init="done/distill"))


def _pretrained(run: _Run, member: int = 0) -> _Teacher:
    if run.state.pretrained_val_acc is None:
        run.state.pretrained_val_acc = float(evaluate(run.teacher, run.data.val, run.device))
    return _Teacher("pretrained", run.teacher, run.state.pretrained_val_acc, _hint_plans(run, None, member),
                    run.teacher_flops)


def teacher_order(accs: list[float]) -> list[int]:
    """The ladder: teachers by validation accuracy, lowest first (ties keep their order)."""
    return sorted(range(len(accs)), key=lambda i: accs[i])


def first_teacher(accs: list[float], order: list[int], student_acc: float) -> int:
    """The position in ``order`` of the least accurate teacher still above the student (a teacher the student
    already beats teaches it nothing), or of the best one when none is."""
    return next((p for p, i in enumerate(order) if accs[i] > student_acc), len(order) - 1)


def _distill(run: _Run, student: nn.Module, teachers: list[_Teacher], phase: str, epochs: int,
             student_acc: float, next_phase: str | None = None, member: int = 0,
             init: str | None = None) -> Generator[dict, None, nn.Module]:
    """``epochs`` of KD training of the exported ``student`` (member ``member``; CE + KD + hints, the configured
    optimizer and lr schedule), from the teacher ladder: it starts at the least accurate teacher above the
    student and moves up when the student passes it (teacher swap). Resumes mid-phase from the checkpoint; a
    finished phase leaves its weights as ``saved["done/<phase>"]`` (``init``: start from such weights)."""
    cfg, state = run.cfg, run.state
    if state.phase != phase:  # done before a restart
        if f"done/{phase}" in state.saved:
            student.load_state_dict(state.saved[f"done/{phase}"])
        return student
    for key in ("student", f"done/{phase}", init):  # resuming: the same decisions give the same shapes
        if key in state.saved:
            student.load_state_dict(state.saved[key])
            break
    accs = [t.val_acc for t in teachers]
    order = teacher_order(accs)
    start = state.student_val_acc if state.student_val_acc is not None else student_acc
    now = {"pos": state.teacher_pos if state.teacher_pos is not None else first_teacher(accs, order, start)}
    opt, _ = _optimizers(student, cfg, run.steps)
    sched = restarts(opt, run.steps, cfg.optim.restart_epochs, cfg.optim.restart_decay, *_lr_span(cfg, phase))
    if "opt_f" in state.saved:
        opt.load_state_dict(state.saved["opt_f"])
        sched.load_state_dict(state.saved["sched_f"])
    lo = cfg.loss
    names = run.net.hint_names
    with ExitStack() as stack:
        s_store = stack.enter_context(taps(student, names))
        t_stores = [stack.enter_context(taps(t.model, names)) for t in teachers]

        def loss_fn(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
            ti = order[now["pos"]]
            with autocast(run.device):
                with torch.no_grad():
                    t_logits = main_output(teachers[ti].model(x))
                logits = main_output(student(x))
                return member_loss(logits, y, t_logits, tau=lo.tau, lambda_kd=lo.lambda_kd, lambda_h=lo.lambda_h,
                                   feats=[s_store[k] for k in names], teacher_feats=[t_stores[ti][k] for k in names],
                                   plans=teachers[ti].plans)

        step = Step(loss_fn, [opt], [sched], compile=run.compile, compile_mode=cfg.compile_mode)
        s_flops = count_flops(student, run.data.input_size)[0]
        while state.phase == phase and state.epoch < epochs:
            t0 = time.time()
            student.train()
            teacher = teachers[order[now["pos"]]]
            terms = train_epoch(step, run.data.train, run.device, batch_size=cfg.data.batch_size,
                                generator=run.generator, name=phase, epoch=state.epoch + 1)
            state.epoch += 1
            acc = float(evaluate(student, run.data.val, run.device))
            metrics = {"phase": phase, "epoch": state.epoch, "epochs": epochs, "lr": sched.get_last_lr()[0],
                       "epoch_time": time.time() - t0, f"val_acc/m{member}": acc, "teacher": teacher.name,
                       "teacher_val_acc": teacher.val_acc,
                       "train_macs": run.steps * cfg.data.batch_size * (3 * s_flops + teacher.flops),
                       "eval_macs": len(run.data.val) * s_flops, **terms}
            if acc > teacher.val_acc and now["pos"] < len(order) - 1:
                now["pos"] += 1  # teacher swap: the student passed its teacher, move up the ladder
                metrics["swap"] = 1
            state.history.append(metrics)
            metrics["epoch_total"] = len(state.history)
            state.teacher_pos, state.student_val_acc = now["pos"], acc
            parts = dict(student=student.state_dict(), opt_f=opt.state_dict(), sched_f=sched.state_dict())
            if state.epoch == epochs:
                parts[f"done/{phase}"] = parts.pop("student")
                if next_phase:  # the next phase starts afresh: its own optimizer, model and ladder position
                    _next(state, next_phase)
                    del parts["opt_f"], parts["sched_f"]
            metrics["eta_s"] = _eta(run)
            run.save(**parts)
            yield metrics
    if state.epoch == epochs and next_phase and state.phase == phase:  # a phase of 0 epochs
        state.saved[f"done/{phase}"] = student.state_dict()
        _next(state, next_phase)
    return student


def _next(state: RunState, phase: str) -> None:
    state.phase, state.epoch, state.teacher_pos, state.student_val_acc = phase, 0, None, None
    for key in ("student", "opt_f", "sched_f"):
        state.saved.pop(key, None)


def _export(run: _Run, student: nn.Module, tuned: dict[int, nn.Module]) -> dict:
    """Measure the exported student (validation: what searches select on; test: reported), save it and every
    TA (fine-tuned where ``tuned`` has it, else as it trained: each a pruned model), and write result.json."""
    cfg, net, state, data = run.cfg, run.net, run.state, run.data
    student = student.eval()
    flops, params = count_flops(student, data.input_size)
    acc = float(evaluate(student, data.test, run.device))         # reported, never used to select
    val_acc = float(evaluate(student, data.val, run.device))      # what searches and benchmarks select on
    student_cpu = student.cpu().float().to(memory_format=torch.contiguous_format)
    torch.save(student_cpu, run.out / "student.pt")
    members = [{**state.member_stats[0], "test_acc": state.member_test[0], "val_acc": state.member_val[0],
                "fine_tuned": False}]  # the student as it ended the joint phase (its export is the result)
    if net.n > 1:
        (run.out / "members").mkdir(exist_ok=True)
    for j in range(1, net.n):
        model = tuned[j].eval() if j in tuned else prepare(net.export(j, fill=False), run.device).eval()
        m_flops, m_params = count_flops(model, data.input_size)
        members.append({**state.member_stats[j], "flops": m_flops, "params": m_params, "fine_tuned": j in tuned,
                        "test_acc": float(evaluate(model, data.test, run.device)) if j in tuned else
                        state.member_test[j],
                        "val_acc": float(evaluate(model, data.val, run.device)) if j in tuned else state.member_val[j]})
        torch.save(model.cpu().float().to(memory_format=torch.contiguous_format), run.out / "members" / f"m{j}.pt")
    if cfg.onnx:
        torch.onnx.export(student_cpu, torch.zeros(1, *data.input_size), run.out / "student.onnx",
                          input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "batch"}})
    base_flops, base_params = net.base_cost  # the unpruned model's, counted as count_flops counts
    result = {
        "accuracy": acc, "val_accuracy": val_acc, "flops": flops, "params": params, "base_flops": base_flops,
        "base_params": base_params, "flops_reduction": 1 - flops / base_flops,
        "params_reduction": 1 - params / base_params, "teacher_accuracy": run.teacher_acc,
        "accuracy_change": acc - run.teacher_acc,
        "members": members,
        "kept_channels": state.member_stats[0]["kept_channels"],
        "decisions": net.decisions(0),
        # training compute: forward (1x) and backward (2x) of every trained model, the frozen teachers' forward
        "train_macs": state.setup_macs + sum(h["train_macs"] for h in state.history),
        "eval_macs": sum(h["eval_macs"] for h in state.history),
        "config": to_dict(cfg), "seed": cfg.seed, "history": state.history,
    }
    (run.out / "result.json").write_text(json.dumps(result, indent=2))
    run.ckpt.unlink(missing_ok=True)  # the run is whole in result.json and the exports; a rerun finds them
    return result
