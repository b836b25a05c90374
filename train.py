"""Train a multi-label classifier with the Asymmetric Loss.

With no argument it trains the built-in demo (configs/demo.yaml) on the CPU.
Without --config the demo config is the base that flags override.

    python train.py
    python train.py --config configs/demo.yaml --loss bce --output runs/demo_bce
    python train.py DATA_ROOT --dataset tagged --model-name resnet18 --image-size 224
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import torch

from asl import cli
from asl.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from asl.config import dump_config, load_config
from asl.engine import amp_dtype_for, build_optimizer, build_scheduler, evaluate, seed_everything, train_one_epoch
from asl.errors import CheckpointError, ConfigError
from asl.factory import dataset_from_config, loader_for, loss_from_config
from asl.models import create_model, data_config, load_init_checkpoint, unwrap_model

log = logging.getLogger("train")
DEMO_CONFIG = Path(__file__).resolve().parent / "configs" / "demo.yaml"


def check_output_dir(out: Path, overwrite: bool, resume) -> None:
    if out.exists() and any((out / f).exists() for f in ("last.pth", "metrics.jsonl")) and not (overwrite or resume):
        raise ConfigError(f"{out} already holds a run; pass --resume {out / 'last.pth'} or --overwrite")
    out.mkdir(parents=True, exist_ok=True)


def load_resume_checkpoint(path: str) -> dict:
    ckpt = load_checkpoint(path)
    missing = [k for k in ("optimizer", "scheduler", "epoch") if ckpt.get(k) is None]
    if missing:
        raise CheckpointError(f"{path}: cannot resume from it, it lacks {', '.join(missing)} (resume from a last.pth)")
    return ckpt


def main(argv=None) -> int:
    parser = cli.build_parser("train.py", __doc__.split("\n\n")[0], cli.TRAIN_FIELDS, positional_data=True)
    cfg = cli.parse_args(parser, argv, base=load_config(str(DEMO_CONFIG)))
    cli.setup_logging()
    resume_ckpt = load_resume_checkpoint(cfg.resume) if cfg.resume else None  # fail before any work
    out = Path(cfg.output)
    check_output_dir(out, cfg.overwrite, cfg.resume)
    if (out / "metrics.jsonl").exists() and not cfg.resume:
        (out / "metrics.jsonl").unlink()
    device = cli.resolve_device(cfg.device)
    seed_everything(cfg.seed)
    amp_dtype = amp_dtype_for(device, cfg.amp)

    loss_fn = loss_from_config(cfg).to(device)  # a bad loss setting fails before any data is read
    # Data first: the class count sizes the head; mean/std come from the model's timm config.
    mean, std = data_config(cfg.model_name)
    train_ds = dataset_from_config(cfg, train=True, mean=mean, std=std)
    val_ds = dataset_from_config(cfg, train=False, mean=mean, std=std)
    log.info("%s\n%s", train_ds.summary(), val_ds.summary())
    model = create_model(cfg.model_name, train_ds.num_classes)
    init = cfg.init_checkpoint or cfg.model_path
    if init:
        load_init_checkpoint(model, init)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)

    gen = torch.Generator().manual_seed(cfg.seed)
    train_loader = loader_for(train_ds, cfg, train=True, device=device, generator=gen)
    val_loader = loader_for(val_ds, cfg, train=False, device=device)
    optimizer = build_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay)
    scheduler = build_scheduler(optimizer, cfg.lr, cfg.epochs, len(train_loader), cfg.pct_start)
    ema = None
    if cfg.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.ema_decay)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None

    start_epoch, global_step, best = 0, 0, {"mAP": -1.0}
    if cfg.resume:
        ckpt = resume_ckpt
        unwrap_model(model).load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ema is not None and ckpt.get("ema") is not None:
            ema.module.load_state_dict(ckpt["ema"])
        start_epoch, global_step = ckpt["epoch"] + 1, ckpt.get("global_step", 0)
        best = ckpt.get("best") or best
        log.info("resumed from %s at epoch %d", cfg.resume, start_epoch)

    dump_config(cfg, out / "config.yaml")
    meta = dict(model_name=cfg.model_name, class_names=train_ds.class_names, image_size=cfg.image_size,
                mean=mean, std=std, config=cfg.to_dict())
    stop = min(cfg.stop_epoch or cfg.epochs, cfg.epochs)
    log.info("training %s on %s for %d epochs (schedule %d), %s, loss %s, %d steps/epoch", cfg.model_name,
             device, stop - start_epoch, cfg.epochs, "AMP " + str(amp_dtype) if amp_dtype else "fp32",
             loss_fn.__class__.__name__, len(train_loader))
    history = []
    if cfg.resume and (out / "metrics.jsonl").exists():
        history = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
                   if line.strip()]
    for epoch in range(start_epoch, stop):
        t0 = time.perf_counter()
        stats = train_one_epoch(model, train_loader, loss_fn, optimizer, device, scheduler=scheduler, ema=ema,
                                scaler=scaler, amp_dtype=amp_dtype, grad_clip=cfg.grad_clip, epoch=epoch,
                                global_step=global_step, print_freq=cfg.print_freq,
                                channels_last=cfg.channels_last)
        global_step = stats["global_step"]
        ev = evaluate(model, val_loader, device, amp_dtype=amp_dtype, desc="val")
        ev_ema = evaluate(ema.module, val_loader, device, amp_dtype=amp_dtype, desc="val ema") if ema else None
        rec = {"epoch": epoch, "train_loss": stats["train_loss"], "mAP": ev["mAP"],
               "mAP_ema": ev_ema["mAP"] if ev_ema else None, "lr": stats["lr"],
               "seconds": time.perf_counter() - t0, "images_per_s": stats["images_per_s"],
               "data_time": stats["data_time"], "nonfinite_steps": stats["nonfinite_steps"],
               "bad_images": stats["bad_images"] + ev["bad_images"]}
        if hasattr(loss_fn, "delta_p"):
            rec.update(gamma_neg=loss_fn.gamma_neg, delta_p=loss_fn.delta_p)
        history.append(rec)
        with open(out / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        log.info("epoch %d: loss %.4f  mAP %.2f  mAP(EMA) %s  %.0fs%s", epoch, rec["train_loss"], rec["mAP"],
                 f"{rec['mAP_ema']:.2f}" if ev_ema else "-", rec["seconds"],
                 f"  ({rec['bad_images']} unreadable images skipped)" if rec["bad_images"] else "")

        use_ema = ev_ema is not None and ev_ema["mAP"] > ev["mAP"]
        current = max(ev["mAP"], ev_ema["mAP"] if ev_ema else -1.0)
        if current > best["mAP"]:
            best = {"mAP": current, "epoch": epoch, "selected": "ema" if use_ema else "model"}
            save_checkpoint(make_checkpoint(ema.module if use_ema else model, epoch=epoch, selected=best["selected"],
                                            mAP=current, **meta), out / "best.pth")
        save_checkpoint(make_checkpoint(model, epoch=epoch, global_step=global_step, best=best,
                                        optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                                        ema=ema.module.state_dict() if ema else None, **meta), out / "last.pth")
        from asl.plots import plot_training_curves

        plot_training_curves(history, out / "curves.png")

    if best["mAP"] >= 0:
        print(f"best mAP {best['mAP']:.2f} at epoch {best['epoch']} ({best['selected']} weights) -> "
              f"{out / 'best.pth'}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
