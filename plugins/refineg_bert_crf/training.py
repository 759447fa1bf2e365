"""The training loop: AdamW, warm-up + linear decay, clipping, early stopping.

Two bugs of the reference release are designed out and tested: the schedule's
length is the configured ``epochs x batches`` (so the learning rate reaches
zero at the end of the last epoch, not early), and the model is put back in
train mode before *every* step (dev evaluation switches it to eval mode), so
dropout is really applied.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from refineg_core.errors import TaggerError
from refineg_core.progress import bar


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def length_batches(
    lengths: Sequence[int], batch_size: int, rng: random.Random | None, bucket: int = 50
) -> list[list[int]]:
    """Batches of indices with similar lengths (little padding).

    With ``rng``: shuffle, sort within chunks of ``bucket`` batches, shuffle the
    batches — random order, yet each batch is length-homogeneous. Without:
    fully sorted (deterministic inference).
    """
    order = list(range(len(lengths)))
    if rng is None:
        order.sort(key=lambda i: lengths[i])
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(order)
    batches: list[list[int]] = []
    chunk = batch_size * bucket
    for c in range(0, len(order), chunk):
        part = sorted(order[c : c + chunk], key=lambda i: lengths[i])
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    rng.shuffle(batches)
    return batches


#: What one encoder call costs beyond its sub-words, in padded sub-word positions.
#: Measured with the bf16 and ONNX runners of MiniLM at 1 thread on an AMD EPYC
#: (benchmarks/RESULTS.md, issue 20): a call of one 16-piece tweet took ~11 ms,
#: each further padded position ~0.1 ms, so a call is worth ~96 positions. Cutting
#: a bucket is therefore only worth it when it saves more padding than that.
CALL_OVERHEAD = 96
#: Special tokens each window adds ([CLS] ... [SEP]).
SPECIAL = 2


def padded_buckets(
    lengths: Sequence[int], max_batch: int, *, overhead: float = CALL_OVERHEAD
) -> list[list[int]]:
    """Inference batches: indices sorted by length, cut where the encoder's cost is least.

    Why: a batch pads every sentence to its longest, so a batch of 64 posts in
    arrival order (as ``pipe`` hands them over) spends most of its encoder time
    on padding; but many small batches pay the per-call cost (~96 positions,
    :data:`CALL_OVERHEAD`) many times, which on a batch of 64 tweets cost more
    than the padding it saved. The cuts minimise ``sum(overhead + rows x
    longest)`` over contiguous runs of the length-sorted order (dynamic
    programming, each run at most ``max_batch``). Callers put results back by
    index, so the order of the input is kept.
    """
    n = len(lengths)
    order = sorted(range(n), key=lambda i: lengths[i])
    size = [max(1, lengths[i]) + SPECIAL for i in order]
    best = [0.0] + [float("inf")] * n  # best[j]: least cost of the first j sorted items
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        longest = size[j - 1]  # the run i..j-1 pads to its last (longest) item
        for i in range(max(0, j - max_batch), j):
            cost = best[i] + overhead + (j - i) * longest
            if cost < best[j]:
                best[j], cut[j] = cost, i
    buckets: list[list[int]] = []
    j = n
    while j > 0:
        buckets.append(order[cut[j] : j])
        j = cut[j]
    buckets.reverse()
    return buckets


def warmup_linear(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR multiplier for optimizer step ``step`` (0-based): linear up, then linear to 0.

    The multiplier is ``(step+1)/warmup`` during warm-up and reaches exactly 0
    only *after* the last step (``total_steps``), so every step trains.
    """
    total = max(1, total_steps)
    warm = max(0, min(warmup_steps, total))

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        return max(0.0, (total - step) / max(1, total - warm))

    return factor


def span_f1(gold: Iterable[set], pred: Iterable[set]) -> dict[str, float]:
    """Micro precision/recall/F1 over ``(start, end, type)`` spans."""
    tp = n_gold = n_pred = 0
    for g, p in zip(gold, pred, strict=True):
        tp += len(g & p)
        n_gold += len(g)
        n_pred += len(p)
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "tp": tp,
        "gold": n_gold,
        "pred": n_pred,
    }


def param_groups(
    model: nn.Module, lr: float, head_lr: float, crf_lr: float, weight_decay: float
) -> list[dict]:
    """Encoder (decayed / not), head (emission + shapes) and CRF, each with its lr."""
    groups: dict[str, list] = {"encoder": [], "encoder_no_decay": [], "head": [], "crf": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("crf."):
            groups["crf"].append(p)
        elif name.startswith("encoder."):
            no_decay = p.dim() == 1 or "LayerNorm" in name or "layer_norm" in name
            groups["encoder_no_decay" if no_decay else "encoder"].append(p)
        else:
            groups["head"].append(p)
    return [
        {"name": "encoder", "params": groups["encoder"], "lr": lr, "weight_decay": weight_decay},
        {
            "name": "encoder_no_decay",
            "params": groups["encoder_no_decay"],
            "lr": lr,
            "weight_decay": 0.0,
        },
        {"name": "head", "params": groups["head"], "lr": head_lr, "weight_decay": 0.0},
        {"name": "crf", "params": groups["crf"], "lr": crf_lr, "weight_decay": 0.0},
    ]


def adamw(groups: list[dict]) -> torch.optim.Optimizer:
    """AdamW with the fused kernel where torch has one for these tensors.

    Why: the default on CPU is the per-tensor loop (``_single_tensor_adam``,
    a dozen small ops for each of ~100 parameter tensors per step); the fused
    kernel does one pass. Same update rule; falls back to the loop when fusing
    is not supported (old torch, unusual dtypes or devices).
    """
    try:
        return torch.optim.AdamW(groups, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def train_loop(
    model: nn.Module,
    n_items: int,
    lengths: Sequence[int],
    loss_fn: Callable[[list[int]], torch.Tensor],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    head_lr: float,
    crf_lr: float,
    warmup_ratio: float,
    grad_clip: float | None,
    weight_decay: float,
    patience: int | None,
    seed: int,
    evaluate: Callable[[], dict] | None = None,
    on_step: Callable[[int, nn.Module], None] | None = None,
    on_epoch: Callable[[int, nn.Module], None] | None = None,
) -> dict:
    """Train ``model``; restore the best checkpoint (by dev F1) and return a report.

    ``loss_fn(indices)`` returns the mean negative log-likelihood of those items.
    ``on_step(step, model)`` is called after each optimizer step (monitoring);
    ``on_epoch(epoch, model)`` after each epoch and its dev evaluation (snapshots).
    A non-finite loss or gradient stops training with a :class:`TaggerError`
    after restoring the last good checkpoint (an epoch boundary, or the start).
    """
    rng = random.Random(seed)
    set_seed(seed)
    steps_per_epoch = math.ceil(n_items / batch_size)
    total_steps = steps_per_epoch * epochs
    optimizer = adamw(
        [g for g in param_groups(model, lr, head_lr, crf_lr, weight_decay) if g["params"]]
    )
    factor = warmup_linear(round(warmup_ratio * total_steps), total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    report: dict = {
        "epochs": [],
        "steps": 0,
        "total_steps": total_steps,
        "steps_per_epoch": steps_per_epoch,
        "lr_trace": {},
        "stopped": "completed",
    }
    for g in optimizer.param_groups:
        report["lr_trace"][g["name"]] = []
    good_state = snapshot(model)
    good_epoch = 0
    best_f1 = -1.0
    bad_epochs = 0
    step = 0
    progress = bar(desc="train", total=total_steps, unit="batch")
    try:
        for epoch in range(1, epochs + 1):
            started = time.perf_counter()
            losses: list[float] = []
            for batch in length_batches(lengths, batch_size, rng):
                model.train()  # evaluation flips to eval(); dropout must be on for every step
                loss = loss_fn(batch)
                if not torch.isfinite(loss):
                    _fail(model, good_state, good_epoch, epoch, step, "loss", report)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if grad_clip:
                    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                    if not torch.isfinite(norm):
                        _fail(model, good_state, good_epoch, epoch, step, "gradient", report)
                for g in optimizer.param_groups:
                    report["lr_trace"][g["name"]].append(g["lr"])
                optimizer.step()
                scheduler.step()
                step += 1
                report["steps"] = step
                losses.append(float(loss.detach()))
                progress.update(1)
                progress.set_postfix(
                    epoch=epoch, loss=f"{losses[-1]:.3f}", dev_f1=f"{max(best_f1, 0):.3f}"
                )
                if on_step is not None:
                    on_step(step, model)
            entry = {
                "epoch": epoch,
                "loss": float(np.mean(losses)) if losses else 0.0,
                "seconds": time.perf_counter() - started,
            }
            if evaluate is not None:
                entry["dev"] = evaluate()
                f1 = entry["dev"]["f1"]
                if f1 > best_f1:
                    best_f1, bad_epochs = f1, 0
                    good_state, good_epoch = snapshot(model), epoch
                else:
                    bad_epochs += 1
            else:
                good_state, good_epoch = snapshot(model), epoch
            report["epochs"].append(entry)
            if on_epoch is not None:
                on_epoch(epoch, model)
            progress.set_postfix(
                epoch=epoch, loss=f"{entry['loss']:.3f}", dev_f1=f"{max(best_f1, 0):.3f}"
            )
            if patience is not None and evaluate is not None and bad_epochs >= patience:
                report["stopped"] = f"early stop after epoch {epoch} (patience {patience})"
                break
    finally:
        progress.close()
    model.load_state_dict(good_state)
    model.eval()
    report["best_epoch"] = good_epoch
    report["best_dev_f1"] = best_f1 if evaluate is not None else None
    return report


def _fail(
    model: nn.Module,
    good_state: dict,
    good_epoch: int,
    epoch: int,
    step: int,
    what: str,
    report: dict,
) -> None:
    model.load_state_dict(copy.deepcopy(good_state))
    model.eval()
    report["stopped"] = f"non-finite {what} at epoch {epoch}, step {step + 1}"
    report["best_epoch"] = good_epoch
    kept = (
        f"the checkpoint of epoch {good_epoch}"
        if good_epoch
        else "the weights from before training"
    )
    err = TaggerError(
        f"training stopped: the {what} became NaN/inf at epoch {epoch}, step {step + 1}; "
        f"the tagger keeps {kept} (try a lower lr or crf_lr, or set grad_clip)",
        where="tagger.fit",
    )
    err.report = report  # type: ignore[attr-defined]
    raise err
