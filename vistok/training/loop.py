"""The training loop shared by every stage (nanoGPT-direct, with the hooks a serious run needs).

One optimizer step per batch: AdamW, warmup + cosine schedule, gradient clipping, optional bf16 autocast, gradient
accumulation over micro-batches, an optional EMA of the weights, tqdm progress with loss and throughput, a JSONL
log, periodic image grids and evaluations, and atomic checkpoints every N steps. The data order is a pure function
of (seed, step), so a resumed run sees exactly the batches the uninterrupted run would have seen; with the RNG
states restored from the checkpoint, resuming reproduces the uninterrupted run's parameters.

Several processes (``torchrun``, see ``distributed.py``): the model (and discriminator) are wrapped in DDP, each
rank takes its slice of every global batch of the same deterministic stream, logged scalars are averaged over ranks,
and only rank 0 writes logs, images, checkpoints and the final model. N ranks × B images per step compute the same
update as one process with N·B images (up to floating-point summation order). With ``train.parallel=fsdp`` the model
is sharded instead of replicated (``fsdp.py``); checkpoints and saved weights are the same full tensors either way.

What is stage-specific lives in a :class:`Task` (``tasks.py``): the loss of one batch, what images to save and
what to evaluate, and optionally a discriminator trained by its own optimizer.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from vistok.data.imagefolder import DrawIndex
from vistok.errors import CheckpointError, ConfigError
from vistok.hub import PretrainedModel
from vistok.training import distributed, fsdp
from vistok.training.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_checkpoint_state,
    load_checkpoint_tensors,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from vistok.training.config import TrainConfig
from vistok.training.ema import EMA
from vistok.training.schedule import build_scheduler


class Task(Protocol):
    """What a stage supplies to :func:`train`.

    The loop sets ``task.train_model`` to the module to call for training forwards (the DDP wrapper of ``model``
    with several processes, ``model`` itself otherwise); ``training_step`` must run its forward through it so that
    gradients are averaged across ranks. A task may also have a ``discriminator`` (an ``nn.Module`` trained by its
    own optimizer with the settings in ``discriminator_optim``: lr, beta1, beta2, weight_decay, warmup_steps,
    min_lr_ratio, grad_clip, start) and ``discriminator_step(batch, step)``, called after each ``training_step``
    from step ``start`` on, which runs the discriminator through ``task.train_discriminator``.
    """

    model: PretrainedModel

    def training_step(self, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss to minimize and named scalars to log."""

    def save_images(self, step: int, path: Path) -> None:
        """Write a grid PNG showing progress (reconstructions, samples)."""

    def evaluate(self, step: int) -> dict[str, float]:
        """Metrics on a fixed held-out set (may return {})."""


class StepBatchSampler(Sampler[list[int]]):
    """Batches for steps ``start_step .. total_steps-1``: the stream of epoch permutations (each seeded by
    (seed, epoch)) cut into global batches of ``batch_size``, so batch ``s`` is the same whether or not the run was
    interrupted, and whatever the number of processes.

    With ``world_size`` ranks, rank r takes the r-th of ``world_size`` equal slices of every global batch (what
    ``DistributedSampler`` does to an epoch, applied to each step's batch, so the union over ranks is the one-process
    batch) and yields it as ``grad_accum`` consecutive micro-batches.
    """

    def __init__(self, num_items: int, batch_size: int, total_steps: int, seed: int, start_step: int = 0,
                 rank: int = 0, world_size: int = 1, grad_accum: int = 1) -> None:
        if num_items <= 0:
            raise ValueError("the training dataset is empty")
        if batch_size % (world_size * grad_accum):
            raise ValueError(f"the global batch {batch_size} is not divisible by {world_size} ranks × {grad_accum} "
                             "accumulation steps")
        self.n, self.bs, self.total, self.seed, self.start = num_items, batch_size, total_steps, seed, start_step
        self.rank, self.world, self.accum = rank, world_size, grad_accum

    def _perm(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))

    def global_batches(self) -> Iterator[list[int]]:
        pos = self.start * self.bs
        epoch, perm = pos // self.n, self._perm(pos // self.n)
        for _ in range(self.start, self.total):
            batch = []
            while len(batch) < self.bs:
                if pos // self.n != epoch:
                    epoch, perm = pos // self.n, self._perm(pos // self.n)
                batch.append(DrawIndex(int(perm[pos % self.n]), epoch))  # the epoch seeds augmentation
                pos += 1
            yield batch

    def __iter__(self) -> Iterator[list[int]]:
        per_rank = self.bs // self.world
        micro = per_rank // self.accum
        for batch in self.global_batches():
            mine = batch[self.rank * per_rank:(self.rank + 1) * per_rank]
            for i in range(self.accum):
                yield mine[i * micro:(i + 1) * micro]

    def __len__(self) -> int:
        return (self.total - self.start) * self.accum


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


def global_batch_size(cfg: TrainConfig, world_size: int) -> int:
    """Images per optimizer step over all ranks (``batch_scope``: ``global`` or ``per_rank``), checked to split
    evenly into ranks × accumulation steps."""
    global_batch = cfg.batch_size if cfg.batch_scope == "global" else cfg.batch_size * world_size
    if global_batch % (world_size * cfg.grad_accum):
        raise ConfigError(f"train.batch_size={cfg.batch_size} ({cfg.batch_scope}) does not split into {world_size} "
                          f"ranks × train.grad_accum={cfg.grad_accum} equal micro-batches")
    return global_batch


def _adamw(params: list[torch.nn.Parameter], lr: float, betas: tuple[float, float], weight_decay: float,
           device: torch.device, eps: float = 1e-8) -> torch.optim.AdamW:
    decay = [p for p in params if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in params if p.requires_grad and p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=betas, eps=eps, fused=device.type == "cuda")


def _param_names(model: torch.nn.Module) -> list[str]:
    """The parameter names in the order ``_adamw`` numbers them (its two groups, one after the other)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [n for n, p in named if p.ndim >= 2] + [n for n, p in named if p.ndim < 2]


def _optimizer_by_name(state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """A ``torch.optim`` state dict keyed by parameter numbers → the same keyed by parameter names (FSDP's layout)."""
    return {"state": {names[i]: v for i, v in state["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]}


def _optimizer_by_number(state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    index = {n: i for i, n in enumerate(names)}
    return {"state": {index[n]: v for n, v in state["state"].items()},
            "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]]}


def _wrap_ddp(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    if not distributed.active():
        return module
    from torch.nn.parallel import DistributedDataParallel

    # find_unused_parameters: some parts are used only on some steps (a mask token under nested dropout)
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=True)


def _sync_context(module: torch.nn.Module, sync: bool):
    """DDP all-reduces gradients on the last micro-batch of a step only."""
    return nullcontext() if sync or not hasattr(module, "no_sync") else module.no_sync()


def train(task: Task, dataset: Dataset, cfg: TrainConfig, run_dir: str | Path, *, resume: bool = False,
          device: torch.device | None = None, callbacks: list[Callable[[int], None]] | None = None,
          eval_every: int = 0, progress: bool = True) -> PretrainedModel:
    """Run (or continue) training; returns the trained model (holding the EMA weights when those are the outputs),
    also saved with ``save_pretrained(run_dir)``.

    ``callbacks`` are called with the number of completed steps after each step (tests use one to simulate a
    crash; a callback may raise to stop the run).
    """
    run_dir = Path(run_dir)
    rank, world = distributed.rank(), distributed.world_size()
    main = rank == 0
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    device = device or pick_device(cfg.device)
    global_batch = global_batch_size(cfg, world)
    model = task.model
    sharded = cfg.parallel == "fsdp" and distributed.active()
    ckpt = latest_checkpoint(run_dir) if resume else None
    plain = None
    if sharded:
        if ckpt is not None:
            load_checkpoint(ckpt, model)  # the full weights go in before sharding; the rest after, in _resume
        plain = fsdp.template(model, main)
    model.to(device)
    if sharded:
        fsdp.shard(model)  # before the optimizer and the EMA, which then hold this rank's shards
    optimizer = _adamw(list(model.parameters()), cfg.lr, (cfg.beta1, cfg.beta2), cfg.weight_decay, device, cfg.eps)
    scheduler = build_scheduler(optimizer, cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio)
    ema = EMA(model, cfg.ema.decay, cfg.ema.start, cfg.ema.every) if cfg.ema.decay > 0 else None

    disc = getattr(task, "discriminator", None)
    d_opt = d_sched = None
    if disc is not None:
        d = task.discriminator_optim
        disc.to(device)
        d_opt = _adamw(list(disc.parameters()), d.lr, (d.beta1, d.beta2), d.weight_decay, device)
        # its schedule counts discriminator steps, which start at `start`
        d_sched = build_scheduler(d_opt, max(1, cfg.steps - int(d.start)), d.warmup_steps, d.min_lr_ratio)

    start = 0
    if ckpt is not None:
        start = _resume(ckpt, cfg, model, optimizer, scheduler, ema, disc, d_opt, d_sched, global_batch, main,
                        sharded)
    else:
        if resume and main:
            print(f"no checkpoint in {run_dir / 'checkpoints'}; starting from step 0")
        torch.manual_seed(cfg.seed + 100_003 * rank)  # per-rank random streams (dropout, noise); rank 0: cfg.seed

    task.train_model = model if sharded else _wrap_ddp(model, device)
    if disc is not None:
        task.train_discriminator = _wrap_ddp(disc, device)
    sampler = StepBatchSampler(len(dataset), global_batch, cfg.steps, cfg.seed, start, rank, world, cfg.grad_accum)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.num_workers, persistent_workers=False,
                        pin_memory=device.type == "cuda")
    log_file = (run_dir / "log.jsonl").open("a") if main else None
    swap = (lambda: ema.swapped(model)) if ema is not None and cfg.ema.use_for_outputs else nullcontext

    @contextmanager
    def outputs():  # every rank enters; rank 0's task sees the output weights, under FSDP gathered whole
        with swap(), fsdp.full_model(model, plain, device) as whole:
            task.model = whole if whole is not None else model
            try:
                yield task.model
            finally:
                task.model = model
    model.train()
    bar = tqdm(total=cfg.steps, initial=start, disable=not progress or not main, desc=f"train {run_dir.name}",
               dynamic_ncols=True)
    window_t, window_items = time.perf_counter(), 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    batches = iter(loader)
    step = start
    try:
        while step < cfg.steps:
            micro_batches = [next(batches) for _ in range(cfg.grad_accum)]
            logs: dict[str, float] = {}
            loss_sum = 0.0
            d_on = disc is not None and step >= task.discriminator_optim.start
            for i, batch in enumerate(micro_batches):
                batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
                last = i == cfg.grad_accum - 1
                with _sync_context(task.train_model, last):
                    with autocast_context(device, cfg.precision):
                        loss, step_logs = task.training_step(batch, step)
                    _check_finite(loss, step, run_dir)
                    (loss / cfg.grad_accum).backward()
                if d_on:  # after the generator side of the same micro-batch, as LlamaGen/taming alternate them
                    with _sync_context(task.train_discriminator, last):
                        with autocast_context(device, cfg.precision):
                            d_loss, d_logs = task.discriminator_step(batch, step)
                        _check_finite(d_loss, step, run_dir)
                        (d_loss / cfg.grad_accum).backward()
                    step_logs = {**step_logs, **d_logs}
                loss_sum += float(loss.detach())
                for k, v in step_logs.items():
                    logs[k] = logs.get(k, 0.0) + float(v) / cfg.grad_accum
                window_items += len(next(iter(v for v in batch.values() if torch.is_tensor(v))))
            grad_norm = (torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                         if cfg.grad_clip > 0 else torch.tensor(0.0))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            if d_on:
                if task.discriminator_optim.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(disc.parameters(), task.discriminator_optim.grad_clip)
                d_opt.step()
                d_opt.zero_grad(set_to_none=True)
                d_sched.step()
            step += 1
            if ema is not None:
                ema.update(model, step)
            bar.update(1)

            if step % cfg.log_every == 0 or step == cfg.steps:
                elapsed = time.perf_counter() - window_t
                record = distributed.mean_scalars(
                    {"loss": loss_sum / cfg.grad_accum, "grad_norm": float(fsdp.full_tensor(grad_norm)), **logs},
                    device)
                record = {"step": step, "lr": scheduler.get_last_lr()[0],
                          "items_per_s": window_items * world / max(elapsed, 1e-9),
                          "process_cpu_s": time.process_time(), **record}  # CPU budgets of checkpoints
                if device.type == "cuda":
                    record["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                if main:
                    log_file.write(json.dumps(record) + "\n")
                    log_file.flush()
                bar.set_postfix(loss=f"{record['loss']:.4f}", ips=f"{record['items_per_s']:.0f}")
                window_t, window_items = time.perf_counter(), 0
            if cfg.image_every and (step % cfg.image_every == 0 or step == cfg.steps):
                with outputs() as m:
                    if main:
                        _in_eval(m, task.save_images, step, run_dir / "images" / f"step_{step:07d}.png")
                    distributed.barrier()
            if cfg.ckpt_every and (step % cfg.ckpt_every == 0 or step == cfg.steps):
                _save(run_dir, step, cfg, model, plain, optimizer, scheduler, ema, disc, d_opt, d_sched, global_batch,
                      device)
            if eval_every and step % eval_every == 0 and step != cfg.steps:
                with outputs() as m:
                    if main:
                        _log_eval(log_file, step, _in_eval(m, task.evaluate, step))
                    distributed.barrier()
            for cb in callbacks or []:
                cb(step)
        with outputs() as m:
            if main:
                _log_eval(log_file, step, _in_eval(m, task.evaluate, step))
            distributed.barrier()
    finally:
        bar.close()
        if log_file is not None:
            log_file.close()
    model.eval()
    _save_final(model, plain, ema, cfg.ema.use_for_outputs, run_dir, main, device)
    if ema is not None and cfg.ema.use_for_outputs:
        ema.copy_to(model)
    if sharded:  # rank 0 of an FSDP run returns a plain model with the output weights (the others their shards)
        with fsdp.full_model(model, plain, device) as whole:
            if whole is not None:
                model = copy.deepcopy(whole)
    distributed.barrier()
    return model


def _check_finite(loss: torch.Tensor, step: int, run_dir: Path) -> None:
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss is {loss.item()} at step {step}; lower train.lr or check the data "
                                 f"(last checkpoint: {latest_checkpoint(run_dir)})")


def _save_final(model: PretrainedModel, plain: PretrainedModel | None, ema: EMA | None, ema_outputs: bool,
                run_dir: Path, main: bool, device: torch.device) -> None:
    """``run_dir`` gets the output weights (EMA ones by default when EMA is on); the other set goes to
    ``run_dir/non_ema`` (or ``run_dir/ema``) so both can be evaluated. Every rank calls it; rank 0 writes."""
    with fsdp.full_model(model, plain, device) as whole:
        if main:
            whole.save_pretrained(run_dir / ("non_ema" if ema is not None and ema_outputs else ""))
    if ema is None:
        return
    with ema.swapped(model), fsdp.full_model(model, plain, device) as whole:
        if main:
            whole.save_pretrained(run_dir / ("" if ema_outputs else "ema"))


def _save(run_dir: Path, step: int, cfg: TrainConfig, model: PretrainedModel, plain: PretrainedModel | None, optimizer,
          scheduler, ema: EMA | None, disc: torch.nn.Module | None, d_opt, d_sched, global_batch: int,
          device: torch.device) -> None:
    """Checkpoint (rank 0 writes; every rank contributes its RNG state, and under FSDP its shards)."""
    rngs = distributed.gather_objects(rng_state())
    sharded = fsdp.is_sharded(model)
    main = distributed.rank() == 0
    # the sharded parts are gathered by all ranks together; a replicated model's are read on rank 0 alone
    opt_state = fsdp.optimizer_state(model, optimizer) if sharded else optimizer.state_dict() if main else None
    ema_state = ema.state_dict() if ema is not None and (sharded or main) else None
    with fsdp.full_model(model, plain, device) as whole:
        if main:
            state = {"optimizer": opt_state, "scheduler": scheduler.state_dict(), "rng": rngs[0],
                     "rng_per_rank": rngs, "world_size": len(rngs), "global_batch": global_batch,
                     "grad_accum": cfg.grad_accum, "parallel": "fsdp" if sharded else "ddp"}
            tensors = {}
            if ema_state is not None:
                tensors["ema"] = ema_state
            if disc is not None:
                tensors["discriminator"] = disc.state_dict()
                state.update(disc_optimizer=d_opt.state_dict(), disc_scheduler=d_sched.state_dict())
            save_checkpoint(run_dir, step, whole, state, keep=cfg.keep_checkpoints, tensors=tensors)
        distributed.barrier()


def _resume(ckpt: Path, cfg: TrainConfig, model: PretrainedModel, optimizer, scheduler, ema: EMA | None,
            disc: torch.nn.Module | None, d_opt, d_sched, global_batch: int, main: bool, sharded: bool = False) -> int:
    """Restore everything from ``ckpt`` (every rank reads the same folder); returns the step to continue from.
    Parts the checkpoint lacks (an older run without EMA or discriminator) start fresh, and the run says so.
    ``sharded``: the model is FSDP-sharded and already holds the checkpoint's weights."""
    say = print if main else (lambda *a, **k: None)
    state = load_checkpoint_state(ckpt) if sharded else load_checkpoint(ckpt, model)
    # the optimizer state is keyed by parameter numbers (DDP runs) or names (FSDP runs); either resumes either way
    opt_state, names = state["optimizer"], _param_names(model)
    by_name = any(isinstance(k, str) for k in opt_state["state"]) or any(
        isinstance(p, str) for g in opt_state["param_groups"] for p in g["params"])
    if sharded:
        fsdp.load_optimizer_state(model, optimizer, opt_state if by_name else _optimizer_by_name(opt_state, names))
    else:
        optimizer.load_state_dict(_optimizer_by_number(opt_state, names) if by_name else opt_state)
    scheduler.load_state_dict(state["scheduler"])
    start = int(state["step"])
    rank, world = distributed.rank(), distributed.world_size()
    saved_world = int(state.get("world_size", 1))
    saved_batch = int(state.get("global_batch", global_batch))
    if saved_world != world:
        if cfg.batch_scope == "per_rank":
            raise CheckpointError(
                f"{ckpt} was written by {saved_world} process(es), this run has {world}: with "
                f"train.batch_scope=per_rank that changes the global batch ({saved_batch} → {global_batch}); resume "
                f"with {saved_world} process(es), or set train.batch_scope=global train.batch_size={saved_batch}")
        say(f"{ckpt} was written by {saved_world} process(es), resuming on {world}: the global batch "
            f"({global_batch}) and the data order are kept; per-rank random streams (dropout, noise) are re-seeded, "
            "so the run will not bit-match an uninterrupted one")
    if saved_batch != global_batch:
        say(f"note: {ckpt} was trained with a global batch of {saved_batch}, this run uses {global_batch}; "
            "the data stream from here on differs from the original run's")
    per_rank = state.get("rng_per_rank")
    if per_rank is not None and len(per_rank) == world:
        set_rng_state(per_rank[rank])
    elif per_rank is None and world == 1:
        set_rng_state(state["rng"])  # a checkpoint from before multi-process training
    else:
        torch.manual_seed(cfg.seed + 100_003 * rank + start)
    ema_state = load_checkpoint_tensors(ckpt, "ema")
    if ema is not None:
        if ema_state is None:
            say(f"{ckpt} has no EMA weights: the EMA re-initializes from the model's weights at step {start}")
        else:
            ema.load_state_dict(ema_state, str(ckpt / "ema.safetensors"))
    elif ema_state is not None:
        say(f"{ckpt} has EMA weights but train.ema.decay is 0: they are not used")
    if disc is not None:
        disc_state = load_checkpoint_tensors(ckpt, "discriminator")
        if disc_state is None or "disc_optimizer" not in state:
            say(f"{ckpt} has no discriminator state: the discriminator, its optimizer and its schedule "
                f"re-initialize at step {start}")
        else:
            from vistok.hub import load_state_dict_strict

            load_state_dict_strict(disc, disc_state, source=str(ckpt / "discriminator.safetensors"))
            d_opt.load_state_dict(state["disc_optimizer"])
            d_sched.load_state_dict(state["disc_scheduler"])
    say(f"resumed from {ckpt} at step {start}")
    return start


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
