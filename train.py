"""Train a multi-label classifier with the Asymmetric Loss.

With no argument it trains the built-in demo (configs/demo.yaml) on the CPU.
Without --config, flags apply over configs/finetune.yaml, the fine-tuning base
for your own data (the defaults below), or over configs/demo.yaml when no
--dataset (or --dataset demo) is given. With --config, over that file.
A run writes into --output (default runs/<name of the data folder>), which must
be new or empty, or hold the run that --resume continues.

    python train.py
    python train.py --config configs/demo.yaml --loss bce --output runs/demo_bce
    python train.py data/mytags --dataset tagged --model-name resnet18 --epochs 20
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import torch

from asl import cli
from asl.checkpoint import make_checkpoint, save_checkpoint
from asl.config import dump_config
from asl.data.base import split_warnings
from asl.distributed import ShardSampler, all_true, broadcast_buffers, gather_rows, init_distributed
from asl.engine import (
    EpochSampler,
    amp_dtype_for,
    build_optimizer,
    build_scheduler,
    evaluate,
    get_rng_state,
    seed_everything,
    train_one_epoch,
)
from asl.errors import ConfigError
from asl.factory import dataset_from_config, loader_for, loss_from_config
from asl.models import create_model, data_config, load_init_checkpoint
from asl.runtime import (
    StopSignal,
    check_output_dir,
    check_resume,
    load_resume_checkpoint,
    prepare_training,
    restore_training_state,
    train_help_notes,
)

log = logging.getLogger("train")


def main(argv=None) -> int:
    defaults, notes = train_help_notes()
    parser = cli.build_parser("train.py", __doc__.rsplit("\n\n", 1)[0], cli.TRAIN_FIELDS, positional_data=True,
                              defaults=defaults, notes=notes)
    config_path, flags = cli.parse_flags(parser, argv)
    cli.setup_logging()
    cfg = prepare_training(config_path, flags)  # every value, name and file checked: nothing read yet
    resume_ckpt = None
    if cfg.resume:
        resume_ckpt = load_resume_checkpoint(cfg.resume)
        check_resume(resume_ckpt, cfg)
    out = Path(cfg.output)
    check_output_dir(out, cfg.overwrite, cfg.resume)
    dist_info, device = init_distributed(cli.resolve_device(cfg.device))
    main_process = dist_info.is_main  # only it writes files (logging is already rank 0 only)
    if main_process and (out / "metrics.jsonl").exists() and not cfg.resume:
        (out / "metrics.jsonl").unlink()
    seed_everything(cfg.seed)
    amp_dtype = amp_dtype_for(device, cfg.amp)

    loss_fn = loss_from_config(cfg).to(device)  # a bad loss setting fails before any data is read
    # Data first: the class count sizes the head; mean/std come from the model's timm config.
    mean, std = data_config(cfg.model_name)
    train_ds = dataset_from_config(cfg, train=True, mean=mean, std=std)
    val_ds = dataset_from_config(cfg, train=False, mean=mean, std=std)
    log.info("%s\n%s", train_ds.summary(), val_ds.summary())
    for warning in split_warnings(train_ds, val_ds):
        log.warning("warning: %s", warning)
    if resume_ckpt is not None:
        check_resume(resume_ckpt, cfg, train_ds.class_names)
    model = create_model(cfg.model_name, train_ds.num_classes)
    init = cfg.init_checkpoint or cfg.model_path
    if init:
        load_init_checkpoint(model, init)
    if cfg.sync_bn and dist_info.enabled:
        if device.type != "cuda":
            raise ConfigError("--sync-bn needs CUDA (PyTorch's SyncBatchNorm has no CPU implementation)")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)

    sampler = EpochSampler(len(train_ds), cfg.seed, dist_info.rank, dist_info.world_size)
    train_loader = loader_for(train_ds, cfg, train=True, device=device, sampler=sampler)
    val_sampler = ShardSampler(len(val_ds), dist_info.rank, dist_info.world_size) if dist_info.enabled else None
    val_loader = loader_for(val_ds, cfg, train=False, device=device, sampler=val_sampler)
    gather = (lambda rows: gather_rows(rows, len(val_ds), dist_info)) if dist_info.enabled else None
    optimizer = build_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay)
    scheduler = build_scheduler(optimizer, cfg.lr, cfg.epochs, max(len(train_loader) // cfg.accum_steps, 1),
                                cfg.pct_start)
    ema = None
    if cfg.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=cfg.ema_warmup)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    net = model  # what the steps run: DDP under torchrun; EMA and checkpoints use the bare model
    if dist_info.enabled:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None)
    if cfg.compile:
        net = torch.compile(net)

    start_epoch, global_step, best, resume_epoch = 0, 0, {"mAP": -1.0}, None
    if resume_ckpt is not None:
        start_epoch, global_step, best, resume_epoch = restore_training_state(
            resume_ckpt, model, optimizer, scheduler, ema, scaler, loss_fn)
        log.info("resumed from %s at epoch %d%s", cfg.resume, start_epoch,
                 f", step {resume_epoch['step']}" if resume_epoch else "")

    if main_process:
        dump_config(cfg, out / "config.yaml")
    meta = dict(model_name=cfg.model_name, class_names=train_ds.class_names, image_size=cfg.image_size,
                mean=mean, std=std, config=cfg.to_dict())

    def save_last(epoch: int, step_in_epoch: int = 0, partial=None) -> None:
        """Everything a resume needs, RNG states last (nothing may draw after them)."""
        if not main_process:
            return
        loss_state = {"gamma_neg": loss_fn.gamma_neg} if hasattr(loss_fn, "delta_p") else None
        save_checkpoint(make_checkpoint(
            model, epoch=epoch, global_step=global_step, best=best, optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(), ema=ema.module.state_dict() if ema else None,
            scaler=scaler.state_dict() if scaler else None, loss_state=loss_state, step_in_epoch=step_in_epoch,
            partial=partial, rng=get_rng_state(), **meta), out / "last.pth")

    stop_signal = StopSignal()  # the previous handlers come back when main returns
    try:
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
            first = resume_epoch if epoch == start_epoch else None
            sampler.set_epoch(epoch, first["step"] * cfg.batch_size if first else 0)
            done_before = first["step"] if first else 0

            gamma_trace = []  # adaptive ASL: gamma- after every step (the study's settling analysis)

            def on_step(step: int, partial: dict, epoch: int = epoch, done_before: int = done_before,
                        gamma_trace: list = gamma_trace) -> bool:
                nonlocal global_step
                global_step = step
                if hasattr(loss_fn, "delta_p"):
                    gamma_trace.append(round(loss_fn.gamma_neg, 4))
                in_epoch = done_before + partial["steps"]
                stop_now = stop_signal.received
                if dist_info.enabled:  # every rank stops at the same step, or the others would hang
                    stop_now = not all_true(not stop_now, dist_info)
                if stop_now or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0
                                            and in_epoch < len(train_loader) + done_before):
                    save_last(epoch, in_epoch, partial)
                return stop_now

            stats = train_one_epoch(net, train_loader, loss_fn, optimizer, device, scheduler=scheduler, ema=ema,
                                    scaler=scaler, amp_dtype=amp_dtype, grad_clip=cfg.grad_clip, epoch=epoch,
                                    global_step=global_step, print_freq=cfg.print_freq,
                                    channels_last=cfg.channels_last, max_nonfinite=cfg.max_nonfinite,
                                    on_step=on_step, resume=first,
                                    all_finite=(lambda ok: all_true(ok, dist_info)) if dist_info.enabled else None,
                                    accum_steps=cfg.accum_steps)
            global_step = stats["global_step"]
            if stats["interrupted"]:
                print(f"stopped by {stop_signal.name or 'a signal'}; state saved: resume with --resume "
                      f"{out / 'last.pth'}", file=sys.stderr)
                return 128 + stop_signal.signum
            for m in (model, ema.module if ema else None):
                if m is not None:
                    broadcast_buffers(m, dist_info)  # ranks evaluate (and rank 0 saves) one model
            ev = evaluate(model, val_loader, device, amp_dtype=amp_dtype, desc="val", gather=gather)
            ev_ema = (evaluate(ema.module, val_loader, device, amp_dtype=amp_dtype, desc="val ema", gather=gather)
                      if ema else None)
            rec = {"epoch": epoch, "train_loss": stats["train_loss"], "mAP": ev["mAP"],
                   "mAP_ema": ev_ema["mAP"] if ev_ema else None, "lr": stats["lr"],
                   "seconds": time.perf_counter() - t0, "images_per_s": stats["images_per_s"],
                   "data_time": stats["data_time"], "nonfinite_steps": stats["nonfinite_steps"],
                   "bad_images": stats["bad_images"] + ev["bad_images"],
                   # mean validation probability of positive and of negative labels (paper Sec. 2.6)
                   "p_pos": float(ev["scores"][ev["targets"] == 1].mean()) if (ev["targets"] == 1).any() else None,
                   "p_neg": float(ev["scores"][ev["targets"] == 0].mean()) if (ev["targets"] == 0).any() else None}
            if hasattr(loss_fn, "delta_p"):
                rec.update(gamma_neg=loss_fn.gamma_neg, delta_p=loss_fn.delta_p, gamma_neg_steps=gamma_trace)
            history.append(rec)
            if main_process:
                with open(out / "metrics.jsonl", "a", encoding="utf-8") as f:
                    f.write(json.dumps(rec) + "\n")
                write_per_class_ap(out / "per_class_ap.json", epoch, train_ds.class_names, ev, ev_ema)
            log.info("epoch %d: loss %.4f  mAP %.2f  mAP(EMA) %s  %.0fs%s", epoch, rec["train_loss"], rec["mAP"],
                     f"{rec['mAP_ema']:.2f}" if ev_ema else "-", rec["seconds"],
                     f"  ({rec['bad_images']} unreadable images skipped)" if rec["bad_images"] else "")

            use_ema = ev_ema is not None and ev_ema["mAP"] > ev["mAP"]
            current = max(ev["mAP"], ev_ema["mAP"] if ev_ema else -1.0)
            if current > best["mAP"]:
                best = {"mAP": current, "epoch": epoch, "selected": "ema" if use_ema else "model"}
                if main_process:
                    save_checkpoint(make_checkpoint(ema.module if use_ema else model, epoch=epoch,
                                                    selected=best["selected"], mAP=current, **meta), out / "best.pth")
            if main_process:
                from asl.plots import plot_training_curves

                plot_training_curves(history, out / "curves.png")
            save_last(epoch)
            if cfg.patience and epoch - best.get("epoch", epoch) >= cfg.patience:
                log.info("early stop: no better mAP for %d epochs (best %.2f at epoch %d)", cfg.patience, best["mAP"],
                         best["epoch"])
                break
            if stop_signal.received:
                print(f"stopped by {stop_signal.name} after epoch {epoch}; resume with --resume {out / 'last.pth'}",
                      file=sys.stderr)
                return 128 + stop_signal.signum

        if dist_info.enabled:
            torch.distributed.destroy_process_group()
        if best["mAP"] >= 0 and main_process:
            print(f"best mAP {best['mAP']:.2f} at epoch {best['epoch']} ({best['selected']} weights) -> "
                  f"{out / 'best.pth'}")
        return 0
    finally:
        stop_signal.restore()


def write_per_class_ap(path: Path, epoch: int, class_names, ev: dict, ev_ema) -> None:
    """The latest epoch's AP per class, plain and EMA (read by tools/study.py's frequency analysis)."""

    def ap(e):
        return None if e is None else [None if v != v else round(float(v), 5) for v in e["per_class_ap"]]

    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"epoch": epoch, "class_names": list(class_names), "ap": ap(ev), "ap_ema": ap(ev_ema)}),
                   encoding="utf-8")
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(cli.run(main))
