"""One cascade run: joint phase, student fine-tuning with teacher swaps, export.

``prune_epochs`` is a generator that yields one metrics dict per epoch (so a CLI prints them and a Ray
trial reports them) and returns the final result dict. It checkpoints every epoch into ``out_dir`` and,
started again on the same ``out_dir``, resumes from the last checkpoint.
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any, Callable, Generator

import torch
import torch.nn as nn

from .config import PruneConfig, to_dict
from .data import DataBundle, load_data
from .engine import (autocast, evaluate, load_checkpoint, lr_factor, prepare, resolve_device, save_atomic)
from .flops import count_flops
from .losses import cascade_loss, member_loss
from .members import CascadeNet
from .teacher import get_teacher

__all__ = ["prune_epochs", "run_prune", "load_prune_data"]

CHECKPOINT = "checkpoint.pt"


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


def _hint_modules(model: nn.Module, names: list[str]) -> tuple[list, dict[str, torch.Tensor]]:
    """Forward hooks that store the outputs of the named modules of ``model``."""
    store: dict[str, torch.Tensor] = {}
    hooks = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: store.__setitem__(n, o))
             for n in names]
    return hooks, store


def prune_epochs(cfg: PruneConfig, out_dir: str | Path, *, data: DataBundle | None = None,
                 teacher: tuple[nn.Module, float] | None = None, log: Callable[[str], None] = print,
                 ) -> Generator[dict, None, dict]:
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    data = data or load_prune_data(cfg)
    t_model, t_acc = teacher or get_teacher(cfg, data, device, log)
    out = Path(out_dir)  # created only once data and teacher are known good: bad input writes nothing
    out.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, *data.input_size)
    base = copy.deepcopy(t_model).cpu().float()  # the pretrained weights seed every member
    for p in base.parameters():
        p.requires_grad_(True)
    net = CascadeNet(base, cfg.cascade.ratios, example, score_init=cfg.cascade.score_init,
                     hint_layers=cfg.loss.hint_layers if cfg.loss.lambda_h > 0 else 0,
                     route_scores=cfg.cascade.route_scores, budget=cfg.cascade.budget,
                     round_to=cfg.cascade.round_to)
    base_flops, base_params = net.base_cost  # the unpruned model's, counted as count_flops counts
    net = prepare(net, device)
    n = net.n
    bs, s = cfg.data.batch_size, cfg.schedule
    steps = max(1, len(data.train) // bs)
    g = torch.Generator().manual_seed(cfg.seed)

    opt_w, opt_s = _optimizers(net, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt_w, lambda k: lr_factor(k, steps, cfg.optim.restart_epochs, cfg.optim.restart_decay))
    state: dict[str, Any] = {"phase": "joint", "epoch": 0, "history": [], "joint_member_acc": None}
    ckpt = out / CHECKPOINT
    if ckpt.exists():
        state = load_checkpoint(ckpt)
        net.load_state_dict(state["net"])
        if state["phase"] == "joint":
            opt_w.load_state_dict(state["opt_w"])
            opt_s.load_state_dict(state["opt_s"])
            sched.load_state_dict(state["sched"])
        g.set_state(state["rng"])
        log(f"resuming from {ckpt}: {state['phase']} phase, {state['epoch']} epochs done")
    t_hooks, t_store = _hint_modules(t_model, net.hint_names)

    # ---------------------------------------------------------------- joint phase
    prev_masks = [m.detach().clone() for m in net.hard_masks()]
    while state["phase"] == "joint" and state["epoch"] < s.joint_epochs:
        t0 = time.time()
        net.train()
        sums: dict[str, torch.Tensor] = {}
        for x, y in data.train.batches(bs, device, train=True, generator=g):
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device):
                with torch.no_grad():
                    t_logits = t_model(x)
                t_feats = [t_store[k] for k in net.hint_names]
                if net.hint_names:
                    logits, feats = net(x, with_features=True)
                else:
                    logits, feats = net(x), None
                terms = cascade_loss(logits, y, t_logits, tau=cfg.loss.tau, lambda_kd=cfg.loss.lambda_kd,
                                     lambda_h=cfg.loss.lambda_h, feats=feats, teacher_feats=t_feats,
                                     reduction=cfg.loss.member_reduction)
            opt_w.zero_grad(set_to_none=True)
            opt_s.zero_grad(set_to_none=True)
            terms["loss"].backward()
            opt_w.step()
            opt_s.step()
            sched.step()
            for k, v in terms.items():  # summed on the device: no host synchronisation per step
                sums[k] = sums.get(k, 0) + v.detach()
        _check_finite(sums["loss"], "joint", state["epoch"] + 1)
        state["epoch"] += 1
        masks = [m.detach().clone() for m in net.hard_masks()]
        accs = evaluate(net, data.val, device)
        metrics = {"phase": "joint", "epoch": state["epoch"], "epochs": s.joint_epochs,
                   "lr": sched.get_last_lr()[0], "epoch_time": time.time() - t0}
        metrics.update({k: float(v) / steps for k, v in sums.items()})
        for i in range(n):
            flipped = sum(int((a[i] != b[i]).sum()) for a, b in zip(masks, prev_masks))
            metrics[f"val_acc/m{i}"] = accs[i]
            metrics[f"churn/m{i}"] = flipped / net.total_filters
            metrics[f"kept/m{i}"] = sum(float(m[i].sum()) for m in masks) / net.total_filters
        prev_masks = masks
        state["joint_member_acc"] = accs
        if state["epoch"] == s.joint_epochs:
            state.update(phase="finetune", epoch=0)
        state["history"].append(metrics)
        _save(ckpt, state, net, opt_w, opt_s, sched, g)
        yield metrics

    for h in t_hooks:
        h.remove()
    # Member test accuracies and stats at the end of the joint phase (masked members).
    member_test = evaluate(net, data.test, device)
    member_stats = net.member_stats()

    # ---------------------------------------------------------------- fine-tune phase
    # The student is exported now (mask frozen, physically smaller, so fine-tuning is cheap) and trained
    # with KD from a ladder of frozen teachers: the TAs (exported too) and then the pretrained model.
    student = state.get("student") or net.export(0)
    student = prepare(student, device)
    ladder = [prepare(net.export(j), device).eval() for j in range(1, n)] + [t_model]
    ladder_acc = list(state["joint_member_acc"][1:]) + [float(evaluate(t_model, data.val, device))]
    for m in ladder[:-1]:
        for p in m.parameters():
            p.requires_grad_(False)
    student_acc = state.get("student_val_acc", state["joint_member_acc"][0])
    if "teacher_idx" in state:
        ti = state["teacher_idx"]
    else:  # the smallest member that is more accurate than the student (a weaker one teaches nothing)
        ti = next((j for j, a in enumerate(ladder_acc) if a > student_acc), len(ladder) - 1)
    # Hints between differently pruned modules: scatter each to full width at its kept channel positions.
    masks = net.hard_masks()
    kept = [_kept_bn_channels(net, masks, j, net.hint_names) for j in range(n)] + [None]
    opt_f, _ = _optimizers(student, cfg)
    sched_f = torch.optim.lr_scheduler.LambdaLR(
        opt_f, lambda k: lr_factor(k, steps, cfg.optim.restart_epochs, cfg.optim.restart_decay))
    if state["phase"] == "finetune" and "opt_f" in state:
        opt_f.load_state_dict(state["opt_f"])
        sched_f.load_state_dict(state["sched_f"])
    while state["phase"] == "finetune" and state["epoch"] < s.finetune_epochs:
        t0 = time.time()
        student.train()
        teacher_m = ladder[ti]
        # hooks live only for the epoch's batches: a module holding them could not be pickled
        hooks, s_store = _hint_modules(student, net.hint_names)
        th, tstore = _hint_modules(teacher_m, net.hint_names)
        sums = {}
        for x, y in data.train.batches(bs, device, train=True, generator=g):
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device):
                with torch.no_grad():
                    t_logits = teacher_m(x)
                logits = student(x)
                feats = [_full_width(s_store[k], kept[0][k], net, k) for k in net.hint_names]
                t_feats = [_full_width(tstore[k], kept[ti + 1][k] if kept[ti + 1] else None, net, k)
                           for k in net.hint_names]
                terms = member_loss(logits, y, t_logits, tau=cfg.loss.tau, lambda_kd=cfg.loss.lambda_kd,
                                    lambda_h=cfg.loss.lambda_h, feats=feats, teacher_feats=t_feats)
            opt_f.zero_grad(set_to_none=True)
            terms["loss"].backward()
            opt_f.step()
            sched_f.step()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0) + v.detach()
        for h in hooks + th:
            h.remove()
        _check_finite(sums["loss"], "finetune", state["epoch"] + 1)
        state["epoch"] += 1
        student_acc = float(evaluate(student, data.val, device))
        metrics = {"phase": "finetune", "epoch": state["epoch"], "epochs": s.finetune_epochs,
                   "lr": sched_f.get_last_lr()[0], "epoch_time": time.time() - t0, "val_acc/m0": student_acc,
                   "teacher": "pretrained" if ti == len(ladder) - 1 else f"m{ti + 1}"}
        metrics.update({k: float(v) / steps for k, v in sums.items()})
        if student_acc > ladder_acc[ti] and ti < len(ladder) - 1:
            ti += 1  # teacher swap: the student passed its teacher, move up the hierarchy
            metrics["swap"] = 1
        state.update(student=student, teacher_idx=ti, student_val_acc=student_acc,
                     opt_f=opt_f.state_dict(), sched_f=sched_f.state_dict())
        state["history"].append(metrics)
        _save(ckpt, state, net, opt_w, opt_s, sched, g)
        yield metrics

    # ---------------------------------------------------------------- export and result
    student = student.eval()
    flops, params = count_flops(student, data.input_size)
    acc = float(evaluate(student, data.test, device))         # reported, never used to select
    val_acc = float(evaluate(student, data.val, device))      # what searches and benchmarks select on
    student_cpu = student.cpu().float().to(memory_format=torch.contiguous_format)
    torch.save(student_cpu, out / "student.pt")
    if cfg.onnx:
        torch.onnx.export(student_cpu, torch.zeros(1, *data.input_size), out / "student.onnx",
                          input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "batch"}})
    result = {
        "accuracy": acc, "val_accuracy": val_acc, "flops": flops, "params": params, "base_flops": base_flops, "base_params": base_params,
        "flops_reduction": 1 - flops / base_flops, "params_reduction": 1 - params / base_params,
        "teacher_accuracy": t_acc, "accuracy_change": acc - t_acc,
        "members": [{**st, "test_acc": member_test[i], "val_acc": state["joint_member_acc"][i]}
                    for i, st in enumerate(member_stats)],
        "kept_channels": member_stats[0]["kept_channels"],
        "decisions": net.decisions(0),
        "config": to_dict(cfg), "seed": cfg.seed, "history": state["history"],
    }
    (out / "result.json").write_text(json.dumps(result, indent=2))
    return result


def _check_finite(loss_sum: torch.Tensor, phase: str, epoch: int) -> None:
    """A diverged run fails loudly (one sync per epoch) rather than training on NaNs."""
    if not torch.isfinite(loss_sum).item():
        raise FloatingPointError(f"loss is not finite in {phase} epoch {epoch}: lower the learning rate")


def _optimizers(model: nn.Module, cfg: PruneConfig) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer | None]:
    """SGD (Nesterov) on weights, BN and heads; the configured optimizer on the filter scores."""
    o = cfg.optim
    score_ids = {id(p) for p in getattr(model, "scores", [])}
    weights = [p for p in model.parameters() if id(p) not in score_ids and p.requires_grad]
    opt_w = torch.optim.SGD(weights, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0,
                            weight_decay=o.weight_decay)
    if not score_ids:
        return opt_w, None
    scores = list(model.scores)
    opt_s = {"rmsprop": lambda: torch.optim.RMSprop(scores, lr=o.score_lr),
             "sgd": lambda: torch.optim.SGD(scores, lr=o.score_lr),
             "adam": lambda: torch.optim.Adam(scores, lr=o.score_lr)}[o.score_optimizer]()
    return opt_w, opt_s


def _save(path: Path, state: dict, net, opt_w, opt_s, sched, g) -> None:
    state.update(net=net.state_dict(), rng=g.get_state())
    if state["phase"] == "joint":
        state.update(opt_w=opt_w.state_dict(), opt_s=opt_s.state_dict(), sched=sched.state_dict())
    save_atomic(state, path)


def _kept_bn_channels(net: CascadeNet, masks: list[torch.Tensor], member: int,
                      names: list[str]) -> dict[str, torch.Tensor]:
    """For each named BN, the (full-width) channel indices that member keeps, in order."""
    out = {}
    for gi, g in enumerate(net.groups):
        for bn, root_idx in g.bns:
            if bn in names:
                out[bn] = torch.tensor([c for c, r in enumerate(root_idx) if masks[gi][member, r] > 0])
    return out


def _full_width(f: torch.Tensor, kept: torch.Tensor | None, net: CascadeNet, name: str) -> torch.Tensor:
    """(B, C_kept, H, W) -> (B, C_full, H, W) with zeros where channels were pruned."""
    if kept is None:
        return f
    full = f.new_zeros(f.shape[0], net.body.get_submodule(name).copies[0].num_features, *f.shape[2:])
    full[:, kept.to(f.device)] = f
    return full
