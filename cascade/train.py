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
from .teacher import get_teacher

__all__ = ["prune_epochs", "run_prune", "load_prune_data", "format_epoch"]

CHECKPOINT = "checkpoint.pt"
# The distance a score may travel over the joint phase when ``optim.score_lr`` is None: RMSProp moves a score
# by about its lr per step, so lr = SCORE_TRAVEL / joint steps. Scores start as ranks in (0, 1]: a constant lr
# of 1e-4 moves them 0.03 in a 300-step run (the masks stay at their L1 start) and 2.8 over the paper's 28k
# steps. 0.3 is what 1e-3 gives in BENCHMARKS.md's 4-epoch runs, where it beat both 1e-4 and (travel 1.0) 3e-3
# (under the former lr schedule; since, 1e-4 is within 0.2 points).
SCORE_TRAVEL = 0.3


def load_prune_data(cfg: PruneConfig) -> DataBundle:
    d = cfg.data
    return load_data(name=d.name, root=d.root, download=d.download, image_size=d.image_size,
                     train_subset=d.train_subset, test_subset=d.test_subset, val_fraction=d.val_fraction,
                     seed=cfg.seed, workers=d.workers, cache_dir=cfg.cache_dir)


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
    could not be pickled)."""
    store: dict[str, torch.Tensor] = {}
    hooks = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: store.__setitem__(n, o))
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

    @property
    def ckpt(self) -> Path:
        return self.out / CHECKPOINT

    def save(self, **parts) -> None:
        self.state.update(net=self.net.state_dict(), rng=self.generator.get_state(), **parts)
        save_atomic(self.state, self.ckpt)


def prune_epochs(cfg: PruneConfig, out_dir: str | Path, *, data: DataBundle | None = None,
                 teacher: tuple[nn.Module, float] | None = None, log: Callable[[str], None] = print,
                 ) -> Generator[dict, None, dict]:
    run = _build(cfg, Path(out_dir), data, teacher, log)
    yield from _joint_phase(run)
    student = yield from _finetune_phase(run)
    return _export(run, student)


def _build(cfg: PruneConfig, out: Path, data: DataBundle | None, teacher, log) -> _Run:
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    data = data or load_prune_data(cfg)
    t_model, t_acc = teacher or get_teacher(cfg, data, device, log)
    out.mkdir(parents=True, exist_ok=True)  # only once data and teacher are known good: bad input writes nothing
    base = copy.deepcopy(t_model).cpu().float()  # the pretrained weights seed every member
    for p in base.parameters():
        p.requires_grad_(True)
    net = CascadeNet(base, cfg.cascade.ratios, torch.zeros(2, *data.input_size), score_init=cfg.cascade.score_init,
                     hint_layers=cfg.loss.hint_layers if cfg.loss.lambda_h > 0 else 0,
                     route_scores=cfg.cascade.route_scores, budget=cfg.cascade.budget, round_to=cfg.cascade.round_to,
                     prune_stem=cfg.cascade.prune_stem)
    net = prepare(net, device, channels_last=False)
    if cfg.compile:  # one compile cache for every run of this cache dir (the trials of a search share it)
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(cfg.cache_dir or default_cache_dir()) / "inductor"))
    run = _Run(cfg, out, data, device, t_model, t_acc, net,
               {"phase": "joint", "epoch": 0, "history": [], "joint_member_acc": None},
               max(1, len(data.train) // cfg.data.batch_size), torch.Generator().manual_seed(cfg.seed), cfg.compile)
    if run.ckpt.exists():
        run.state = load_checkpoint(run.ckpt)
        net.load_state_dict(run.state["net"])
        run.generator.set_state(run.state["rng"])
        log(f"resuming from {run.ckpt}: {run.state['phase']} phase, {run.state['epoch']} epochs done")
    return run


def score_lr(cfg: PruneConfig, steps_per_epoch: int) -> float:
    """The scores' learning rate: ``optim.score_lr``, or by default scaled to the joint phase's length."""
    if cfg.optim.score_lr is not None:
        return cfg.optim.score_lr
    mean_factor = 0.5 if cfg.optim.score_schedule == "cosine" else 1.0  # a cosine to 0 averages half its peak
    return SCORE_TRAVEL / (steps_per_epoch * cfg.schedule.joint_epochs * mean_factor)


def _lr_span(cfg: PruneConfig, phase: str) -> tuple[int, int]:
    """(epochs the phase's lr schedule spans, the epoch it starts at). ``optim.lr_schedule: phases``: each phase
    its own cycles, from the peak; ``run``: one schedule over both, the fine-tuning continuing the joint phase's."""
    j, f = cfg.schedule.joint_epochs, cfg.schedule.finetune_epochs
    if cfg.optim.lr_schedule == "run":
        return j + f, 0 if phase == "joint" else j
    return (j if phase == "joint" else f), 0


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

        step = Step(loss_fn, [opt_w, opt_s], scheds, compile=run.compile, compile_mode=run.cfg.compile_mode,
                    after_backward=own_grads_in_full(net, weights) if lo.own_grads == "full" else None)
        prev = net.eval().final_masks().clone()
        while state["phase"] == "joint" and state["epoch"] < cfg.schedule.joint_epochs:
            t0 = time.time()
            net.train()
            terms = train_epoch(step, run.data.train, run.device, batch_size=cfg.data.batch_size,
                                generator=run.generator, name="joint", epoch=state["epoch"] + 1)
            state["epoch"] += 1
            accs = evaluate(net, run.data.val, run.device)  # eval mode: the final (filled) masks, once
            masks = net.final_masks().clone()
            churn = ((masks != prev).sum(1) / net.total_filters).tolist()
            kept = (masks.sum(1) / net.total_filters).tolist()
            prev = masks
            metrics = {"phase": "joint", "epoch": state["epoch"], "epochs": cfg.schedule.joint_epochs,
                       "lr": sched.get_last_lr()[0], "epoch_time": time.time() - t0, **terms}
            for i in range(net.n):
                metrics.update({f"val_acc/m{i}": accs[i], f"churn/m{i}": churn[i], f"kept/m{i}": kept[i]})
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
    """For the exported student and one ladder teacher (member j, or None for the pretrained model): the
    channels each keeps at every hint point, as index tensors on the device (made once, not per step)."""
    net = run.net
    if not net.hint_names:
        return None
    plans = []
    for _, bn in net.hint_points:
        full = net.body.get_submodule(bn).num_features
        t_kept = torch.arange(full) if teacher_member is None else net.kept_positions(teacher_member, bn)
        plans.append(HintPlan(net.kept_positions(0, bn), t_kept, full, run.device))
    return plans


def _finetune_phase(run: _Run) -> Generator[dict, None, nn.Module]:
    """The student is exported now (mask frozen, physically smaller, so fine-tuning is cheap) and trained with
    KD from a ladder of frozen teachers, the exported TAs and then the pretrained model, starting from the
    smallest one more accurate than the student and moving up when the student passes it (teacher swap)."""
    cfg, net, state = run.cfg, run.net, run.state
    net.eval()
    state.setdefault("member_test", evaluate(net, run.data.test, run.device))  # masked members, end of joint
    state.setdefault("member_stats", net.member_stats())
    student = net.export(0)
    if "student" in state:  # resuming: the same decisions give the same shapes, then the trained weights
        student.load_state_dict(state["student"])
    student = prepare(student, run.device)
    ladder = [prepare(net.export(j), run.device).eval().requires_grad_(False) for j in range(1, net.n)] + [run.teacher]
    ladder_acc = list(state["joint_member_acc"][1:]) + [float(evaluate(run.teacher, run.data.val, run.device))]
    plans = [_hint_plans(run, j) for j in range(1, net.n)] + [_hint_plans(run, None)]
    student_acc = state.get("student_val_acc", state["joint_member_acc"][0])
    now = {"teacher": state.get("teacher_idx",
                                next((j for j, a in enumerate(ladder_acc) if a > student_acc), len(ladder) - 1))}
    opt, _ = _optimizers(student, cfg, run.steps)
    sched = restarts(opt, run.steps, cfg.optim.restart_epochs, cfg.optim.restart_decay, *_lr_span(cfg, "finetune"))
    if state["phase"] == "finetune" and "opt_f" in state:
        opt.load_state_dict(state["opt_f"])
        sched.load_state_dict(state["sched_f"])
    lo = cfg.loss
    with ExitStack() as stack:
        s_store = stack.enter_context(taps(student, net.hint_names))
        t_stores = [stack.enter_context(taps(m, net.hint_names)) for m in ladder]

        def loss_fn(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
            ti = now["teacher"]
            with autocast(run.device):
                with torch.no_grad():
                    t_logits = main_output(ladder[ti](x))
                logits = main_output(student(x))
                return member_loss(logits, y, t_logits, tau=lo.tau, lambda_kd=lo.lambda_kd, lambda_h=lo.lambda_h,
                                   feats=[s_store[k] for k in net.hint_names],
                                   teacher_feats=[t_stores[ti][k] for k in net.hint_names], plans=plans[ti])

        step = Step(loss_fn, [opt], [sched], compile=run.compile, compile_mode=cfg.compile_mode)
        while state["phase"] == "finetune" and state["epoch"] < cfg.schedule.finetune_epochs:
            t0 = time.time()
            student.train()
            ti = now["teacher"]
            terms = train_epoch(step, run.data.train, run.device, batch_size=cfg.data.batch_size,
                                generator=run.generator, name="finetune", epoch=state["epoch"] + 1)
            state["epoch"] += 1
            student_acc = float(evaluate(student, run.data.val, run.device))
            metrics = {"phase": "finetune", "epoch": state["epoch"], "epochs": cfg.schedule.finetune_epochs,
                       "lr": sched.get_last_lr()[0], "epoch_time": time.time() - t0, "val_acc/m0": student_acc,
                       "teacher": "pretrained" if ti == len(ladder) - 1 else f"m{ti + 1}", **terms}
            if student_acc > ladder_acc[ti] and ti < len(ladder) - 1:
                now["teacher"] = ti + 1  # teacher swap: the student passed its teacher, move up the hierarchy
                metrics["swap"] = 1
            state["history"].append(metrics)
            run.save(student=student.state_dict(), teacher_idx=now["teacher"], student_val_acc=student_acc,
                     opt_f=opt.state_dict(), sched_f=sched.state_dict())
            yield metrics
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
        "config": to_dict(cfg), "seed": cfg.seed, "history": state["history"],
    }
    (run.out / "result.json").write_text(json.dumps(result, indent=2))
    return result
