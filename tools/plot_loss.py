"""The curves of the paper's loss and gradient figures, drawn from ``asl.functional`` itself.

For a negative label (y = 0) the loss L- and its gradient dL-/dz with respect to the logit,
against the predicted probability p, for gamma- in {0, 1, 2, 4} (no margin) and for the
margin m in {0, 0.05, 0.2} (gamma- = 4 and 0); for a positive label (y = 1) L+ for gamma+ in
{0, 1, 2}. The values come from the project's own loss and its analytic backward, so the
figure is also a picture of what the code computes.

    python tools/plot_loss.py [--output docs/figures/loss_curves.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asl.functional import asymmetric_loss  # noqa: E402


def curve(p: torch.Tensor, y: float, gamma_neg: float, gamma_pos: float, clip: float):
    """(loss, dloss/dlogit) per probability: the full derivative, focusing weights included, as
    in the paper's gradient analysis (training detaches them by default)."""
    z = torch.logit(p.double()).requires_grad_()
    loss = asymmetric_loss(
        z[:, None],
        torch.full((len(p), 1), y, dtype=torch.float64),
        gamma_neg=gamma_neg,
        gamma_pos=gamma_pos,
        clip=clip,
        reduction="none",
        disable_torch_grad_focal_loss=False,
    )
    loss.sum().backward()
    return loss[:, 0].detach().numpy(), z.grad.numpy()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", default="docs/figures/loss_curves.png")
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    p = torch.linspace(1e-3, 1 - 1e-3, 999)
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    for g in (0, 1, 2, 4):
        loss, grad = curve(p, 0.0, g, 0, 0.0)
        axes[0].plot(p, loss, label=f"γ−={g}")
        axes[1].plot(p, grad, label=f"γ−={g}")
    for g, m, style in ((4, 0.0, "-"), (4, 0.05, "--"), (4, 0.2, ":"), (0, 0.05, "-."), (0, 0.2, (0, (1, 3)))):
        _, grad = curve(p, 0.0, g, 0, m)
        axes[2].plot(p, grad, linestyle=style, label=f"γ−={g}, m={m}")
    for g in (0, 1, 2):
        loss, _ = curve(p, 1.0, 0, g, 0.0)
        axes[3].plot(p, loss, label=f"γ+={g}")
    titles = ["L− (y = 0) vs p", "dL−/dz (y = 0) vs p", "dL−/dz with margin m", "L+ (y = 1) vs p"]
    for ax, title in zip(axes, titles):
        ax.set_title(title)
        ax.set_xlabel("p")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylim(0, 5)
    axes[3].set_ylim(0, 5)
    fig.tight_layout()
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    print(f"loss curves -> {out}")


if __name__ == "__main__":
    main()
