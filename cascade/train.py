"""One cascade run: build, joint phase, student fine-tuning with teacher swaps, export.

``prune_epochs`` is a generator that yields one metrics dict per epoch (so a CLI prints them and a Ray trial
reports them) and returns the final result dict. It checkpoints every epoch into ``out_dir`` and, started
again on the same ``out_dir``, resumes from the last checkpoint. Every phase trains through the same
``engine.Step`` and ``engine.train_epoch`` as the teacher and the benchmark's peers.
"""
from __future__ import annotations

import copy
import json
import os
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generator, Iterator

import torch
import torch.nn as nn

from .config import PruneConfig, to_dict
from .data import DataBundle, default_cache_dir, load_data
from .engine import (Step, autocast, evaluate, load_checkpoint, prepare, resolve_device, restarts, save_atomic, sgd,
                     train_epoch)
from .flops import count_flops
from .losses import HintPlan, cascade_loss, member_loss, member_weights
from .members import CascadeNet, main_output
from .masks import GradientMoments, jaccard, spearman
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
    """Run ``prune_epochs`` to the end, printing one line per epoch; returns the result dict."""
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
    accs = " ".join(f"{m[k]:.2f}" for k in sorted(m) if k.startswith("val_acc/m"))
    extra = f"  teacher {m['teacher']}" if "teacher" in m else ""
    return (f"[{m['phase']} {m['epoch']}/{m['epochs']}] loss {m['loss']:.4f}  val acc {accs}%{extra}"
            f"  ({m['epoch_time']:.1f}s)")


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
class _Run:
    """What one cascade run holds from its build to its export."""
    cfg: PruneConfig
    out: Path
    data: DataBundle
    device: torch.device
    teacher: nn.Module
    teacher_acc: float
    net: CascadeNet
    state: dict[str, Any]
    steps: int
    generator: torch.Generator
    compile: bool
    teacher_flops: int  # the frozen teacher's MACs per image (its forward is part of every training step)

    @property
    def ckpt(self) -> Path:
        return self.out / CHECKPOINT

    def save(self, **parts) -> None:
        self.state.update(net=self.net.state_dict(), rng=self.generator.get_state(), **parts)
        save_atomic(self.state, self.ckpt)


def prune_epochs(cfg: PruneConfig, out_dir: str | Path, *, data: DataBundle | None = None,
                 teacher: tuple[nn.Module, float] | None = None, log: Callable[[str], None] = print,
                 peer_scores: torch.Tensor | None = None) -> Generator[dict, None, dict]:
    """``peer_scores``: a one-shot peer's (F,) filter scores instead of its method's importance (controls such
    as a peer pruned to given per-layer widths)."""
    run = _build(cfg, Path(out_dir), data, teacher, log, peer_scores)
    if cfg.method == "cascade":
        yield from _joint_phase(run)
        student = yield from _finetune_phase(run)
    else:
        student = yield from _peer_phases(run)
    return _export(run, student)


def _build(cfg: PruneConfig, out: Path, data: DataBundle | None, teacher, log, peer_scores=None) -> _Run:
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    data = data or load_prune_data(cfg)
    t_model, t_acc = teacher or get_teacher(cfg, data, device, log)
    out.mkdir(parents=True, exist_ok=True)  # only once data and teacher are known good: bad input writes nothing
    base = copy.deepcopy(t_model).cpu().float()  # the pretrained weights seed every member
    for p in base.parameters():
        p.requires_grad_(True)
    peer = cfg.method != "cascade"  # a one-shot peer prunes to the student's ratio; the TAs' are unused
    net = CascadeNet(base, cfg.cascade.ratios[:1] if peer else cfg.cascade.ratios, torch.zeros(2, *data.input_size),
                     score_init=cfg.cascade.score_init, hint_layers=cfg.loss.hint_layers if cfg.loss.lambda_h > 0 else 0,
                     route_scores=cfg.cascade.route_scores, budget=cfg.cascade.budget, round_to=cfg.cascade.round_to,
                     prune_stem=cfg.cascade.prune_stem)
    net = prepare(net, device, channels_last=False)
    if cfg.compile:  # one compile cache for every run of this cache dir (the trials of a search share it)
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(cfg.cache_dir or default_cache_dir()) / "inductor"))
    run = _Run(cfg, out, data, device, t_model, t_acc, net,
               {"phase": "distill" if peer else "joint", "epoch": 0, "history": [], "joint_member_acc": None},
               max(1, len(data.train) // cfg.data.batch_size), torch.Generator().manual_seed(cfg.seed), cfg.compile,
               count_flops(t_model, data.input_size)[0])
    if run.ckpt.exists():
        run.state = load_checkpoint(run.ckpt)
        net.load_state_dict(run.state["net"])
        run.generator.set_state(run.state["rng"])
        log(f"resuming from {run.ckpt}: {run.state['phase']} phase, {run.state['epoch']} epochs done")
    elif peer:
        scores = _peer_scores(run) if peer_scores is None else peer_scores.to(device)
        with torch.no_grad():
            net.scores.copy_(scores[None])
    return run


def _peer_scores(run: _Run) -> torch.Tensor:
    """The peer's one-shot importance of every filter (``cascade.peers``); the Taylor gradient's training MACs
    (forward and backward of the model, the teacher's forward) are counted into the run."""
    cfg = run.cfg
    model = prunable_copy(run.teacher).to(run.device)
    if cfg.method == "taylor":
        taylor_gradients(model, run.teacher, run.data, run.device, tau=cfg.loss.tau, lambda_kd=cfg.loss.lambda_kd,
                         batch_size=cfg.data.batch_size, seed=cfg.seed)
        run.state["setup_macs"] = TAYLOR_BATCHES * cfg.data.batch_size * (3 * run.net.base_cost[0] + run.teacher_flops)
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
    opt_s = {"rmsprop": torch.optim.RMSprop, "sgd": torch.optim.SGD, "adam": torch.optim.Adam}[o.score_optimizer]
    return opt_w, opt_s(scores, lr=score_lr(cfg, steps_per_epoch))


def _joint_phase(run: _Run) -> Generator[dict, None, None]:
    """All members, shared weights, BNs, heads and scores train together; masks follow the scores every step."""
    cfg, net, state = run.cfg, run.net, run.state
    opt_w, opt_s = _optimizers(net, cfg, run.steps)
    sched = restarts(opt_w, run.steps, cfg.optim.restart_epochs, cfg.optim.restart_decay, *_lr_span(cfg, "joint"))
    scheds = [sched]
    if cfg.optim.score_schedule == "cosine":  # to 0 at the last joint step: the masks settle before export
        scheds.append(torch.optim.lr_scheduler.CosineAnnealingLR(opt_s, T_max=run.steps * cfg.schedule.joint_epochs))
    if state["phase"] == "joint" and "opt_w" in state:
        opt_w.load_state_dict(state["opt_w"])
        opt_s.load_state_dict(state["opt_s"])
        saved = state["sched"] if isinstance(state["sched"], list) else [state["sched"]]  # (one, before cosine)
        for sc, sd in zip(scheds, saved):
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
            if rescale:
                rescale()

        step = Step(loss_fn, [opt_w, opt_s], scheds, compile=run.compile, compile_mode=run.cfg.compile_mode,
                    after_backward=after_backward)
        prev = net.eval().step_masks().clone()
        if "start_masks" not in state:  # where the masks start (the L1 ranks by default): how far they learn
            state.update(start_masks=prev.cpu(), start_scores=net.scores.detach().cpu().clone())
        base = net.base_cost[0]  # every member computes at full width in the joint phase: masks save no MACs
        while state["phase"] == "joint" and state["epoch"] < cfg.schedule.joint_epochs:
            t0 = time.time()
            net.train()
            moments.__init__()
            terms = train_epoch(step, run.data.train, run.device, batch_size=cfg.data.batch_size,
                                generator=run.generator, name="joint", epoch=state["epoch"] + 1)
            state["epoch"] += 1
            accs = evaluate(net, run.data.val, run.device)  # eval mode: the trained masks, computed once
            masks = net.step_masks().clone()
            churn = ((masks != prev).sum(1) / net.total_filters).tolist()
            kept = (masks.sum(1) / net.total_filters).tolist()
            overlap = jaccard(masks.cpu(), state["start_masks"]).tolist()
            rank_corr = spearman(net.scores.detach().cpu(), state["start_scores"]).tolist()
            snr = moments.log10_snr()
            prev = masks
            metrics = {"phase": "joint", "epoch": state["epoch"], "epochs": cfg.schedule.joint_epochs,
                       "lr": sched.get_last_lr()[0], "epoch_time": time.time() - t0,
                       "train_macs": run.steps * cfg.data.batch_size * (3 * net.n * base + run.teacher_flops),
                       "eval_macs": len(run.data.val) * net.n * base, **terms}
            for i in range(net.n):
                metrics.update({f"val_acc/m{i}": accs[i], f"churn/m{i}": churn[i], f"kept/m{i}": kept[i],
                                f"mask_jaccard_start/m{i}": overlap[i], f"score_spearman_start/m{i}": rank_corr[i]})
                if snr:
                    metrics[f"grad_log10_snr/m{i}"] = snr[i]
            state["joint_member_acc"] = accs
            if state["epoch"] == cfg.schedule.joint_epochs:
                state.update(phase="finetune", epoch=0)
            state["history"].append(metrics)
            run.save(opt_w=opt_w.state_dict(), opt_s=opt_s.state_dict(),
                     sched=[sc.state_dict() for sc in scheds])
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


def _hint_plans(run: _Run, teacher_member: int | None) -> list[HintPlan] | None:
    """For the exported student (filled to its budget) and one ladder teacher (member j as trained, or None for
    the pretrained model): the channels each keeps at every hint point, as index tensors on the device (made
    once, not per step)."""
    net = run.net
    if not net.hint_names:
        return None
    plans = []
    for _, bn in net.hint_points:
        full = net.body.get_submodule(bn).num_features
        t_kept = torch.arange(full) if teacher_member is None else net.kept_positions(teacher_member, bn, fill=False)
        plans.append(HintPlan(net.kept_positions(0, bn), t_kept, full, run.device))
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
    state.setdefault("member_test", evaluate(net, run.data.test, run.device))  # masked members, end of joint
    state.setdefault("member_stats", net.member_stats())
    teachers = []
    for j in range(1, net.n):
        ta = net.export(j, fill=False)
        teachers.append(_Teacher(f"m{j}", prepare(ta, run.device).eval().requires_grad_(False),
                                 state["joint_member_acc"][j], _hint_plans(run, j),
                                 count_flops(ta, run.data.input_size)[0]))
    teachers.append(_pretrained(run))
    student = prepare(net.export(0), run.device)
    return (yield from _distill(run, student, teachers, "finetune", run.cfg.schedule.finetune_epochs,
                                state["joint_member_acc"][0]))


def _peer_phases(run: _Run) -> Generator[dict, None, nn.Module]:
    """A one-shot peer: its student exported at once from the importance scores (``_build``), then trained by KD
    from the pretrained model for as many epochs as the cascade trains, in two phases of the joint and the
    fine-tune lengths (``optim.lr_schedule`` treats them as the cascade's two phases)."""
    net, state, data = run.net.eval(), run.state, run.data
    student = prepare(net.export(0), run.device)
    if "member_stats" not in state:  # the student as pruned, before any training
        state.update(member_stats=net.member_stats(), member_test=[float(evaluate(student, data.test, run.device))],
                     joint_member_acc=[float(evaluate(student, data.val, run.device))])
    teachers = [_pretrained(run)]
    j, f = run.cfg.schedule.joint_epochs, run.cfg.schedule.finetune_epochs
    student = yield from _distill(run, student, teachers, "distill", j, state["joint_member_acc"][0],
                                  next_phase="finetune")
    return (yield from _distill(run, student, teachers, "finetune", f, state["joint_member_acc"][0]))


def _pretrained(run: _Run) -> _Teacher:
    if "pretrained_val_acc" not in run.state:
        run.state["pretrained_val_acc"] = float(evaluate(run.teacher, run.data.val, run.device))
    return _Teacher("pretrained", run.teacher, run.state["pretrained_val_acc"], _hint_plans(run, None),
                    run.teacher_flops)


def teacher_order(accs: list[float]) -> list[int]:
    """The ladder: teachers by validation accuracy, lowest first (ties keep their order)."""
    return sorted(range(len(accs)), key=lambda i: accs[i])


def first_teacher(accs: list[float], order: list[int], student_acc: float) -> int:
    """The position in ``order`` of the least accurate teacher still above the student (a teacher the student
    already beats teaches it nothing), or of the best one when none is."""
    return next((p for p, i in enumerate(order) if accs[i] > student_acc), len(order) - 1)


def _distill(run: _Run, student: nn.Module, teachers: list[_Teacher], phase: str, epochs: int,
             student_acc: float, next_phase: str | None = None) -> Generator[dict, None, nn.Module]:
    """``epochs`` of KD training of the exported ``student`` (CE + KD + hints, the configured optimizer and lr
    schedule), from the teacher ladder: it starts at the least accurate teacher above the student and moves up
    when the student passes it (teacher swap). Resumes mid-phase from the checkpoint."""
    cfg, state = run.cfg, run.state
    if state["phase"] != phase:  # done before a restart
        return student
    if "student" in state:  # resuming: the same decisions give the same shapes, then the trained weights
        student.load_state_dict(state["student"])
    accs = [t.val_acc for t in teachers]
    order = teacher_order(accs)
    now = {"pos": state.get("teacher_pos", first_teacher(accs, order, state.get("student_val_acc", student_acc)))}
    opt, _ = _optimizers(student, cfg, run.steps)
    sched = restarts(opt, run.steps, cfg.optim.restart_epochs, cfg.optim.restart_decay, *_lr_span(cfg, phase))
    if "opt_f" in state:
        opt.load_state_dict(state["opt_f"])
        sched.load_state_dict(state["sched_f"])
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
        while state["phase"] == phase and state["epoch"] < epochs:
            t0 = time.time()
            student.train()
            teacher = teachers[order[now["pos"]]]
            terms = train_epoch(step, run.data.train, run.device, batch_size=cfg.data.batch_size,
                                generator=run.generator, name=phase, epoch=state["epoch"] + 1)
            state["epoch"] += 1
            acc = float(evaluate(student, run.data.val, run.device))
            metrics = {"phase": phase, "epoch": state["epoch"], "epochs": epochs, "lr": sched.get_last_lr()[0],
                       "epoch_time": time.time() - t0, "val_acc/m0": acc, "teacher": teacher.name,
                       "teacher_val_acc": teacher.val_acc,
                       "train_macs": run.steps * cfg.data.batch_size * (3 * s_flops + teacher.flops),
                       "eval_macs": len(run.data.val) * s_flops, **terms}
            if acc > teacher.val_acc and now["pos"] < len(order) - 1:
                now["pos"] += 1  # teacher swap: the student passed its teacher, move up the ladder
                metrics["swap"] = 1
            state["history"].append(metrics)
            parts = dict(student=student.state_dict(), teacher_pos=now["pos"], student_val_acc=acc,
                         opt_f=opt.state_dict(), sched_f=sched.state_dict())
            if state["epoch"] == epochs and next_phase:  # the next phase starts afresh: its own optimizer
                state.update(phase=next_phase, epoch=0)
                parts.pop("opt_f"), parts.pop("sched_f")
                state.pop("opt_f", None), state.pop("sched_f", None)
            run.save(**parts)
            yield metrics
    if state["epoch"] == epochs and next_phase and state["phase"] == phase:  # a phase of 0 epochs
        state.update(phase=next_phase, epoch=0)
    return student


def _export(run: _Run, student: nn.Module) -> dict:
    """Measure the exported student (validation: what searches select on; test: reported), save it, and
    write result.json."""
    cfg, net, state, data = run.cfg, run.net, run.state, run.data
    student = student.eval()
    flops, params = count_flops(student, data.input_size)
    acc = float(evaluate(student, data.test, run.device))         # reported, never used to select
    val_acc = float(evaluate(student, data.val, run.device))      # what searches and benchmarks select on
    student_cpu = student.cpu().float().to(memory_format=torch.contiguous_format)
    torch.save(student_cpu, run.out / "student.pt")
    if net.n > 1:  # the TAs as they ended the joint phase: pruned models, and the ladder the student learnt from
        (run.out / "members").mkdir(exist_ok=True)
        for j in range(1, net.n):
            torch.save(net.export(j, fill=False).cpu().float(), run.out / "members" / f"m{j}.pt")
    if cfg.onnx:
        torch.onnx.export(student_cpu, torch.zeros(1, *data.input_size), run.out / "student.onnx",
                          input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "batch"}})
    base_flops, base_params = net.base_cost  # the unpruned model's, counted as count_flops counts
    result = {
        "accuracy": acc, "val_accuracy": val_acc, "flops": flops, "params": params, "base_flops": base_flops,
        "base_params": base_params, "flops_reduction": 1 - flops / base_flops,
        "params_reduction": 1 - params / base_params, "teacher_accuracy": run.teacher_acc,
        "accuracy_change": acc - run.teacher_acc,
        "members": [{**st, "test_acc": state["member_test"][i], "val_acc": state["joint_member_acc"][i]}
                    for i, st in enumerate(state["member_stats"])],
        "kept_channels": state["member_stats"][0]["kept_channels"],
        "decisions": net.decisions(0),
        # training compute: forward (1x) and backward (2x) of every trained model, the frozen teachers' forward
        "train_macs": state.get("setup_macs", 0) + sum(h["train_macs"] for h in state["history"]),
        "eval_macs": sum(h["eval_macs"] for h in state["history"]),
        "config": to_dict(cfg), "seed": cfg.seed, "history": state["history"],
    }
    (run.out / "result.json").write_text(json.dumps(result, indent=2))
    return result
