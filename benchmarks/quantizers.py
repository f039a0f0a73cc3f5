"""Group lookup-free quantization (vistok ``lfq``, WeTok's GQ) vs full-codebook LFQ (vector-quantize-pytorch's
``LFQ``, the peer) at total codebook sizes 2^14, 2^16, 2^18: peak memory of one forward + backward (entropy loss
and commitment on) and its time, on the same inputs, in one run. Prints a Markdown table.

    python benchmarks/quantizers.py [--bits 14 16 18 --tokens 256 --repeats 3 --threads 1]

How memory is measured (CPU, honestly): every (quantizer, size) runs in a **fresh subprocess**. After building the
module and the input and doing a warm-up forward + backward on one token (so lazily loaded kernels and thread pools
are already resident), the process resets its peak resident set size (``echo 5 > /proc/self/clear_refs``, Linux
≥ 4.0), runs one forward + backward on the full input, and reports ``VmHWM − VmRSS`` before the step: the extra
resident memory at the step's peak, which covers every tensor the step allocates (activations kept for backward,
gradients, temporaries; PyTorch's CPU allocator returns large blocks to the OS, so RSS follows live tensors). On
CUDA the same script reports ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``. Time: median
of ``--repeats`` forward + backward passes after the memory step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(kind: str, bits: int, groups: int, tokens: int, repeats: int, device: str, threads: int) -> dict:
    """One measurement in this (fresh) process."""
    import torch

    sys.path.insert(0, str(ROOT))
    from vistok.cli.common import peak_memory_mib

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if kind == "peer":
        from vector_quantize_pytorch import LFQ

        quantizer = LFQ(dim=bits, codebook_size=2**bits, entropy_loss_weight=0.1, commitment_loss_weight=0.25)

        def step(x):
            quantized, _, aux = quantizer(x)
            return quantized, aux
    else:
        from vistok.quantizers.lfq import GroupLFQ

        quantizer = GroupLFQ(num_groups=groups, group_dim=bits // groups, entropy_weight=0.1, commitment_weight=0.25)

        def step(x):
            out = quantizer(x)
            return out.quantized, sum(out.losses.values())

    quantizer.to(device).train()
    x = torch.randn(1, tokens, bits, device=device, requires_grad=True)
    weights = torch.randn(1, tokens, bits, device=device)

    def forward_backward(inp):
        quantized, aux = step(inp)
        ((quantized * weights[:, : inp.shape[1]]).sum() + aux).backward()

    forward_backward(x[:, :1].detach().requires_grad_(True))  # warm-up on one token
    x.grad = None
    peak_mib, method = peak_memory_mib(lambda: forward_backward(x), device)
    times = []
    for _ in range(repeats):
        x.grad = None
        start = time.perf_counter()
        forward_backward(x)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"peak_mib": peak_mib, "ms": 1000 * statistics.median(times), "method": method}


def measure(kind: str, bits: int, groups: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, str(bits), str(groups), "--tokens", str(args.tokens),
           "--repeats", str(args.repeats), "--device", args.device, "--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"benchmark worker failed ({' '.join(cmd[2:])}):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bits", type=int, nargs="+", default=[14, 16, 18], help="log2 of the total codebook size")
    p.add_argument("--groups", type=int, nargs="+", default=[2], help="group counts G to measure (G must divide bits)")
    p.add_argument("--tokens", type=int, default=256, help="tokens per forward (a 16×16 grid)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        kind, bits, groups = args.worker[0], int(args.worker[1]), int(args.worker[2])
        print(json.dumps(worker(kind, bits, groups, args.tokens, args.repeats, args.device, args.threads)))
        return

    from importlib.metadata import version

    import torch

    print(f"forward + backward of {args.tokens} tokens (entropy loss, τ = 0.01, + commitment), device {args.device}, "
          f"{args.threads} thread(s), torch {torch.__version__}, vector-quantize-pytorch "
          f"{version('vector-quantize-pytorch')}; each row a fresh process")
    print("| codebook | quantizer | logits per token | peak memory (MiB) | time (ms) | memory vs peer | speed-up |")
    print("|---|---|---|---|---|---|---|")
    method = ""
    for bits in args.bits:
        peer = measure("peer", bits, 1, args)
        method = peer["method"]
        print(f"| 2^{bits} | vector-quantize-pytorch LFQ (full) | {2**bits:,} | {peer['peak_mib']:.1f} | "
              f"{peer['ms']:.1f} | 1 | 1 |", flush=True)
        for groups in args.groups:
            if bits % groups:
                continue
            ours = measure("ours", bits, groups, args)
            g = bits // groups
            print(f"| 2^{bits} | vistok lfq, G={groups} × g={g} | {groups * 2**g:,} | {ours['peak_mib']:.1f} | "
                  f"{ours['ms']:.1f} | {ours['peak_mib'] / peer['peak_mib']:.3f}× | "
                  f"{peer['ms'] / ours['ms']:.1f}× |", flush=True)
    print(f"peak memory: {method}, minus the resident size before the step")


if __name__ == "__main__":
    main()
