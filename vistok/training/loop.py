"""The training loop shared by every stage (nanoGPT-direct, with the hooks a serious run needs).

One optimizer step per batch: AdamW, warmup + cosine schedule, gradient clipping, optional bf16 autocast, tqdm
progress with loss and throughput, a JSONL log, periodic image grids and evaluations, and atomic checkpoints
every N steps. The data order is a pure function of (seed, step), so a resumed run sees exactly the batches the
uninterrupted run would have seen; with the RNG states restored from the checkpoint, resuming reproduces the
uninterrupted run's parameters.

What is stage-specific lives in a :class:`Task` (``tasks.py``): the loss of one batch, what images to save and
what to evaluate. Later additions slot in without restructuring: EMA weights and GAN/perceptual losses are Task
concerns (a GAN task owns its discriminator and second optimizer in ``training_step``); DDP wraps ``task.model``
and shards ``StepBatchSampler`` by rank.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from vistok.hub import PretrainedModel
from vistok.training.checkpoint import latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from vistok.training.config import TrainConfig
from vistok.training.schedule import build_scheduler


class Task(Protocol):
    model: PretrainedModel

    def training_step(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss to minimize and named scalars to log."""

    def save_images(self, step: int, path: Path) -> None:
        """Write a grid PNG showing progress (reconstructions, samples)."""

    def evaluate(self, step: int) -> dict[str, float]:
        """Metrics on a fixed held-out set (may return {})."""


class StepBatchSampler(Sampler[list[int]]):
    """Batches for steps ``start_step .. total_steps-1``: the stream of epoch permutations (each seeded by
    (seed, epoch)) cut into batches, so batch ``s`` is the same whether or not the run was interrupted."""

    def __init__(self, num_items: int, batch_size: int, total_steps: int, seed: int, start_step: int = 0) -> None:
        if num_items <= 0:
            raise ValueError("the training dataset is empty")
        self.n, self.bs, self.total, self.seed, self.start = num_items, batch_size, total_steps, seed, start_step

    def _perm(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))

    def __iter__(self) -> Iterator[list[int]]:
        pos = self.start * self.bs
        epoch, perm = pos // self.n, self._perm(pos // self.n)
        for _ in range(self.start, self.total):
            batch = []
            while len(batch) < self.bs:
                if pos // self.n != epoch:
                    epoch, perm = pos // self.n, self._perm(pos // self.n)
                batch.append(int(perm[pos % self.n]))
                pos += 1
            yield batch

    def __len__(self) -> int:
        return self.total - self.start


def pick_device(name: str = "auto") -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast_context(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision != "fp32":
        raise ValueError(f"train.precision must be 'fp32' or 'bf16', got {precision!r}")
    return nullcontext()


def train(task: Task, dataset: Dataset, cfg: TrainConfig, run_dir: str | Path, *, resume: bool = False,
          device: torch.device | None = None, callbacks: list[Callable[[int], None]] | None = None,
          eval_every: int = 0, progress: bool = True) -> PretrainedModel:
    """Run (or continue) training; returns the trained model, also saved with ``save_pretrained(run_dir)``.

    ``callbacks`` are called with the number of completed steps after each step (tests use one to simulate a
    crash; a callback may raise to stop the run).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = device or pick_device(cfg.device)
    model = task.model
    model.to(device)
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                  fused=device.type == "cuda")
    scheduler = build_scheduler(optimizer, cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio)

    start = 0
    ckpt = latest_checkpoint(run_dir) if resume else None
    if ckpt is not None:
        state = load_checkpoint(ckpt, model)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        start = int(state["step"])
        print(f"resumed from {ckpt} at step {start}")
    elif resume:
        print(f"no checkpoint in {run_dir / 'checkpoints'}; starting from step 0")
    else:
        torch.manual_seed(cfg.seed)

    loader = DataLoader(dataset, batch_sampler=StepBatchSampler(len(dataset), cfg.batch_size, cfg.steps, cfg.seed,
                                                                start),
                        num_workers=cfg.num_workers, persistent_workers=False, pin_memory=device.type == "cuda")
    log_file = (run_dir / "log.jsonl").open("a")
    model.train()
    bar = tqdm(total=cfg.steps, initial=start, disable=not progress, desc=f"train {run_dir.name}", dynamic_ncols=True)
    window_t, window_items = time.perf_counter(), 0
    step = start
    try:
        for batch in loader:
            batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
            with autocast_context(device, cfg.precision):
                loss, logs = task.training_step(batch, step)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {step}; lower train.lr or check the data "
                                         f"(last checkpoint: {latest_checkpoint(run_dir)})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = (torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                         if cfg.grad_clip > 0 else torch.tensor(0.0))
            optimizer.step()
            scheduler.step()
            step += 1
            window_items += len(next(iter(v for v in batch.values() if torch.is_tensor(v))))
            bar.update(1)

            if step % cfg.log_every == 0 or step == cfg.steps:
                elapsed = time.perf_counter() - window_t
                record = {"step": step, "loss": loss.item(), "lr": scheduler.get_last_lr()[0],
                          "grad_norm": float(grad_norm), "items_per_s": window_items / max(elapsed, 1e-9), **logs}
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
                bar.set_postfix(loss=f"{record['loss']:.4f}", ips=f"{record['items_per_s']:.0f}")
                window_t, window_items = time.perf_counter(), 0
            if cfg.image_every and (step % cfg.image_every == 0 or step == cfg.steps):
                _in_eval(model, task.save_images, step, run_dir / "images" / f"step_{step:07d}.png")
            if cfg.ckpt_every and (step % cfg.ckpt_every == 0 or step == cfg.steps):
                save_checkpoint(run_dir, step, model, {"optimizer": optimizer.state_dict(),
                                                       "scheduler": scheduler.state_dict(), "rng": rng_state()},
                                keep=cfg.keep_checkpoints)
            if eval_every and step % eval_every == 0 and step != cfg.steps:
                _log_eval(log_file, step, _in_eval(model, task.evaluate, step))
            for cb in callbacks or []:
                cb(step)
        _log_eval(log_file, step, _in_eval(model, task.evaluate, step))
    finally:
        bar.close()
        log_file.close()
    model.eval()
    model.save_pretrained(run_dir)
    return model


def _log_eval(log_file, step: int, metrics: dict[str, float] | None) -> None:
    if metrics:
        log_file.write(json.dumps({"step": step, "eval": metrics}) + "\n")
        log_file.flush()
        tqdm.write(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))


def _in_eval(model: torch.nn.Module, fn: Callable[..., Any], *args: Any) -> Any:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return fn(*args)
    finally:
        model.train(was_training)
