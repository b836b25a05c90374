"""The official Alibaba-MIIL/ASL code, transcribed once (shared/reference): the oracle of the tests
(``from bench.official import ...``) and the baseline of the benchmarks. Only the official
global grad-mode toggle is scoped (``torch.set_grad_enabled`` in a ``with``)."""

from __future__ import annotations

import numpy as np
import torch


def official_average_precision(output, target):
    """The official average_precision, transcribed from its definition (shared/reference, 2):
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
    """The official ``AsymmetricLoss.forward`` operations (shared/reference, 1), with its global
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
