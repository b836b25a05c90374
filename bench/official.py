"""The official Alibaba-MIIL/ASL code, transcribed once (the official repository): the oracle of the tests
(``from bench.official import ...``) and the baseline of the benchmarks. Only the official
global grad-mode toggle is scoped (``torch.set_grad_enabled`` in a ``with``)."""

from __future__ import annotations

import numpy as np
import torch


def official_average_precision(output, target):
    """The official average_precision, transcribed from the official definition:
    ``argsort()[::-1]`` is numpy's default (unstable) sort, reversed."""
    indices = output.argsort()[::-1]
    total_count_ = np.cumsum(np.ones((len(output), 1)))
    target_ = target[indices]
    ind = target_ == 1
    pos_count_ = np.cumsum(ind)
    total = pos_count_[-1]
    pos_count_[np.logical_not(ind)] = 0
    pp = pos_count_ / total_count_
    return np.sum(pp) / (total + 1e-8)


def official_map(targs, preds):
    """The official ``mAP``: the class loop, in percent (a class without positives counts as 0)."""
    if np.size(preds) == 0:
        return 0
    ap = np.zeros((preds.shape[1]))
    for k in range(preds.shape[1]):
        ap[k] = official_average_precision(preds[:, k], targs[:, k])
    return 100 * ap.mean()


def official_asymmetric_loss(x, y, gamma_neg=4, gamma_pos=1, clip=0.05, eps=1e-8, detach=True):
    """The official ``AsymmetricLoss.forward`` operations, with its global
    grad-mode toggle scoped."""
    xs_pos = torch.sigmoid(x)
    xs_neg = 1 - xs_pos
    if clip is not None and clip > 0:
        xs_neg = (xs_neg + clip).clamp(max=1)
    loss = y * torch.log(xs_pos.clamp(min=eps)) + (1 - y) * torch.log(xs_neg.clamp(min=eps))
    if gamma_neg > 0 or gamma_pos > 0:
        with torch.set_grad_enabled(not detach and torch.is_grad_enabled()):
            pt = xs_pos * y + xs_neg * (1 - y)
            w = torch.pow(1 - pt, gamma_pos * y + gamma_neg * (1 - y))
        loss = loss * w
    return -loss.sum()


def official_asymmetric_loss_optimized(x, y, gamma_neg=4.0, gamma_pos=0.0, clip=0.05, eps=1e-8, detach=True):
    """The official AsymmetricLossOptimized.forward, with the global grad toggle scoped."""
    targets = y
    anti_targets = 1 - y
    xs_pos = torch.sigmoid(x)
    xs_neg = 1.0 - xs_pos
    if clip is not None and clip > 0:
        xs_neg.add_(clip).clamp_(max=1)
    loss = targets * torch.log(xs_pos.clamp(min=eps))
    loss.add_(anti_targets * torch.log(xs_neg.clamp(min=eps)))
    if gamma_neg > 0 or gamma_pos > 0:
        with torch.set_grad_enabled(not detach):
            xs_pos = xs_pos * targets
            xs_neg = xs_neg * anti_targets
            asymmetric_w = torch.pow(1 - xs_pos - xs_neg, gamma_pos * targets + gamma_neg * anti_targets)
        loss *= asymmetric_w
    return -loss.sum()


def official_single_label(inputs, target, gamma_pos, gamma_neg, eps):
    """The official ASLSingleLabel.forward, transcribed."""
    num_classes = inputs.size()[-1]
    log_preds = torch.log_softmax(inputs, dim=-1)
    targets = torch.zeros_like(inputs).scatter_(1, target.long().unsqueeze(1), 1)
    anti_targets = 1 - targets
    xs_pos = torch.exp(log_preds)
    xs_neg = 1 - xs_pos
    xs_pos = xs_pos * targets
    xs_neg = xs_neg * anti_targets
    w = torch.pow(1 - xs_pos - xs_neg, gamma_pos * targets + gamma_neg * anti_targets)
    log_preds = log_preds * w
    if eps > 0:
        targets = targets.mul(1 - eps).add(eps / num_classes)
    return -(targets.mul(log_preds)).sum(-1).mean()


def official_add_weight_decay(model, weight_decay=1e-4, skip_list=()):
    """The official ``add_weight_decay``: no decay on 1-D parameters and biases."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if len(param.shape) == 1 or name.endswith(".bias") or name in skip_list:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


class OfficialModelEma(torch.nn.Module):
    """The official ``ModelEma`` (timm's first EMA): ``e = decay e + (1 - decay) m`` over the state dict."""

    def __init__(self, model, decay=0.9997):
        import copy

        super().__init__()
        self.module = copy.deepcopy(model)
        self.module.eval()
        self.decay = decay

    def update(self, model):
        with torch.no_grad():
            for ema_v, model_v in zip(self.module.state_dict().values(), model.state_dict().values()):
                ema_v.copy_(self.decay * ema_v + (1.0 - self.decay) * model_v)


def official_train(
    model,
    batches,
    lr=1e-4,
    epochs=80,
    stop_epoch=40,
    weight_decay=1e-4,
    ema_decay=0.9997,
    gamma_neg=4,
    gamma_pos=0,
    clip=0.05,
):
    """The official ``train.py`` loop (its recipe): Adam over ``add_weight_decay``
    groups, OneCycle (pct_start 0.2) over ``epochs`` x ``len(batches)`` steps, ``if epoch >
    Stop_epoch: break`` (so ``stop_epoch + 1`` epochs train), summed ASL on float logits,
    ``model.zero_grad()``, step, scheduler step, EMA update. On the CPU: no autocast, no scaler.

    Args:
        model: the model, in its initial state (trained in place).
        batches: one epoch's ``[(images, targets), ...]``, the same every epoch.

    Returns:
        (model, ema module, the learning rate of each step).
    """
    ema = OfficialModelEma(model, ema_decay)
    optimizer = torch.optim.Adam(params=official_add_weight_decay(model, weight_decay), lr=lr, weight_decay=0)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, steps_per_epoch=len(batches), epochs=epochs, pct_start=0.2
    )
    lrs = []
    model.train()
    for epoch in range(epochs):
        if epoch > stop_epoch:
            break
        for images, target in batches:
            output = model(images).float()
            loss = official_asymmetric_loss(output, target, gamma_neg, gamma_pos, clip)
            model.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            lrs.append(optimizer.param_groups[0]["lr"])
            ema.update(model)
    return model, ema.module, lrs


def official_partial_loss(
    x,
    t,
    mode="negative",
    clip=0.0,
    gamma_pos=0.0,
    gamma_neg=1.0,
    gamma_unann=2.0,
    alpha_pos=1.0,
    alpha_neg=1.0,
    alpha_unann=1.0,
    likelihood_topk=5,
    prior=None,
    prior_threshold=0.05,
):
    """The CSL repository's ``PartialSelectiveLoss`` (PartialLabelingCSL), restated from its
    definition step by step, with its element-wise masks and its per-entry weight table (the weight
    loops run in Python over flattened entries, as its top-k does): the oracle of ``asl.partial``.
    ``x`` (N, C) logits, ``t`` (N, C) in {1, 0, -1}; returns the summed loss."""
    t_pos, t_neg, t_unann = (t == 1).to(x.dtype), (t == 0).to(x.dtype), (t == -1).to(x.dtype)
    xs_pos = torch.sigmoid(x)
    xs_neg = 1.0 - xs_pos
    if clip is not None and clip > 0:
        xs_neg = (xs_neg + clip).clamp(max=1)
    n, c = t.shape
    if mode == "negative":
        weights = torch.ones_like(x)
    elif mode == "ignore":
        weights = torch.ones_like(x)
        weights[t == -1] = 0
    elif mode == "ignore_normalize_classes":
        n_annotated = 1 + (t != -1).sum(dim=1).to(x.dtype)  # in the logits' dtype: float64 in the tests
        g_norm = 1.0 / n_annotated + 1.0
        weights = g_norm.repeat([c, 1]).T.clone()
        weights[t == -1] = 0
    else:  # selective
        weights = torch.ones_like(x)
        if prior is not None and prior_threshold:
            ignored = torch.where(torch.as_tensor(prior) > prior_threshold)[0]
            weights[:, ignored] = 0
            weights = ((weights + (t != -1).to(x.dtype)) > 0).to(x.dtype)
        flat_t, flat_w, flat_neg = t.flatten(), weights.flatten(), xs_neg.detach().flatten()
        unknown = torch.where(flat_t == -1)[0]
        order = torch.argsort(flat_neg[unknown], stable=True)
        flat_w[unknown[order[: likelihood_topk * n]]] = 0
        weights = flat_w.view(n, c)
    bce = (
        alpha_pos * t_pos * torch.log(torch.clamp(xs_pos, min=1e-8))
        + alpha_neg * t_neg * torch.log(torch.clamp(xs_neg, min=1e-8))
        + alpha_unann * t_unann * torch.log(torch.clamp(xs_neg, min=1e-8))
    )
    with torch.no_grad():
        w_focus = torch.pow(
            1 - xs_pos * t_pos - xs_neg * (t_neg + t_unann),
            gamma_pos * t_pos + gamma_neg * t_neg + gamma_unann * t_unann,
        )
    return -(bce * w_focus * weights).sum()
