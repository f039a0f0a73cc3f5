"""vistok's conv tokenizer (``conv2d``, its own Encoder/Decoder in vistok/tokenizers/conv_nets.py) against 🤗
diffusers' ``VQModel`` (diffusers' Encoder/Decoder, wrapped as ``diffusers_vq``) at equal parameter count: the same
VQGAN architecture (channels, channel mults, residual blocks per level, middle attention, z channels, codebook),
both through vistok's tokenizer interface. Encode, decode and encode + decode images/s, and the peak memory of one
encode + decode, in one run. Also counts the code lines of conv_nets.py that building on diffusers' blocks would
replace. Prints a Markdown table (and ``--json``).

    python benchmarks/tokenizer_speed.py [--resolution 128 --channels 64 --batch 8 --repeats 5 --threads 1]

Time: both models are built in this process and timed in alternating rounds (vistok, diffusers, vistok, …), so
load from other processes falls on both alike and the ratio is meaningful; medians of ``--repeats`` rounds after a
warm-up, under ``torch.inference_mode``. Memory: as benchmarks/quantizers.py, every model runs once more in a fresh
subprocess, which resets its peak resident set size after a warm-up (``/proc/self/clear_refs``) and reports
``VmHWM − VmRSS`` around one encode + decode of the batch; on CUDA ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def configs(args: argparse.Namespace) -> dict[str, dict]:
    """The two tokenizers, the same architecture written in each library's terms."""
    mult = list(args.channel_mult)
    quantizer = {"name": "vq", "codebook_size": args.codebook_size, "code_dim": args.code_dim, "l2_norm": False}
    vistok_cfg = {"name": "conv2d", "resolution": args.resolution, "channels": args.channels, "channel_mult": mult,
                  "num_res_blocks": args.num_res_blocks, "z_channels": args.z_channels, "mid_attention": True,
                  "quantizer": quantizer}
    levels = len(mult)
    vae = {"block_out_channels": [args.channels * m for m in mult], "layers_per_block": args.num_res_blocks,
           "latent_channels": args.z_channels, "vq_embed_dim": args.code_dim, "num_vq_embeddings": args.codebook_size,
           "norm_num_groups": 32, "down_block_types": ["DownEncoderBlock2D"] * levels,
           "up_block_types": ["UpDecoderBlock2D"] * levels, "mid_block_add_attention": True}
    return {"vistok conv2d": vistok_cfg,
            "diffusers VQModel": {"name": "diffusers_vq", "resolution": args.resolution, "vae": vae}}


def build(cfg: dict, device: str):
    import torch

    import vistok

    torch.manual_seed(0)
    return vistok.build("tokenizer", cfg).to(device).eval()


def memory_worker(cfg: dict, batch: int, device: str, threads: int) -> dict:
    """Peak extra memory of one encode + decode of ``batch`` images, in this (fresh) process."""
    import torch

    from vistok.cli.common import peak_memory_mib

    torch.set_num_threads(threads)
    tok = build(cfg, device)
    x = torch.rand(batch, 3, tok.resolution, tok.resolution, device=device) * 2 - 1
    with torch.inference_mode():
        tok.decode(tok.encode(x[:1]))  # warm-up: kernels, thread pools
        peak_mib, method = peak_memory_mib(lambda: tok.decode(tok.encode(x)), device)
    return {"peak_mib": peak_mib, "method": method}


def measure_memory(name: str, cfg: dict, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--memory-worker", json.dumps(cfg), "--batch", str(args.batch),
           "--device", args.device, "--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"memory worker for {name} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def time_models(models: dict, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Median seconds per batch of encode and decode, rounds alternating between the models."""
    import torch

    def sync():
        if args.device == "cuda":
            torch.cuda.synchronize()

    x = torch.rand(args.batch, 3, args.resolution, args.resolution, device=args.device) * 2 - 1
    times = {name: {"encode": [], "decode": []} for name in models}
    with torch.inference_mode():
        for tok in models.values():  # warm-up
            tok.decode(tok.encode(x))
        for _ in range(args.repeats):
            for name, tok in models.items():
                sync()
                t0 = time.perf_counter()
                tokens = tok.encode(x)
                sync()
                t1 = time.perf_counter()
                tok.decode(tokens)
                sync()
                t2 = time.perf_counter()
                times[name]["encode"].append(t1 - t0)
                times[name]["decode"].append(t2 - t1)
    return {name: {k: statistics.median(v) for k, v in t.items()} for name, t in times.items()}


def replaceable_lines() -> dict[str, int]:
    """Code lines (no blank lines, comments or docstrings) of the conv_nets.py pieces diffusers' Encoder/Decoder
    would replace."""
    from vistok.tokenizers import conv_nets

    counts = {}
    for name in ("_norm", "ResBlock", "AttnBlock", "Downsample", "Encoder", "Decoder"):
        node = ast.parse(inspect.getsource(getattr(conv_nets, name)))
        for n in ast.walk(node):  # drop docstrings
            body = getattr(n, "body", None)
            if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                    and isinstance(getattr(body[0], "value", None), ast.Constant) \
                    and isinstance(body[0].value.value, str):
                body.pop(0)
        lines = [ln for ln in ast.unparse(node).splitlines() if ln.strip() and not ln.strip().startswith("#")]
        counts[name] = len(lines)
    return counts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--channel-mult", type=int, nargs="+", default=[1, 1, 2, 2, 4])
    p.add_argument("--num-res-blocks", type=int, default=2)
    p.add_argument("--z-channels", type=int, default=256)
    p.add_argument("--codebook-size", type=int, default=16384)
    p.add_argument("--code-dim", type=int, default=8)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the results to this file")
    p.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_worker:
        print(json.dumps(memory_worker(json.loads(args.memory_worker), args.batch, args.device, args.threads)))
        return

    import diffusers
    import torch

    torch.set_num_threads(args.threads)
    cfgs = configs(args)
    models = {name: build(cfg, args.device) for name, cfg in cfgs.items()}
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    timed = time_models(models, args)
    memory = {name: measure_memory(name, cfg, args) for name, cfg in cfgs.items()}
    lines = replaceable_lines()
    print(f"{args.resolution}×{args.resolution} images, batch {args.batch}, channels {args.channels} × "
          f"{args.channel_mult}, {args.num_res_blocks} res blocks/level, z {args.z_channels}, codebook "
          f"{args.codebook_size} × {args.code_dim}; device {args.device}, {args.threads} thread(s), torch "
          f"{torch.__version__}, diffusers {diffusers.__version__}; median of {args.repeats} alternating rounds")
    print("| tokenizer | parameters | encode img/s | decode img/s | encode + decode img/s | peak memory (MiB) |")
    print("|---|---|---|---|---|---|")
    rows = {}
    for name in cfgs:
        t, b = timed[name], args.batch
        rows[name] = {"parameters": params[name], "encode_img_s": b / t["encode"], "decode_img_s": b / t["decode"],
                      "encode_decode_img_s": b / (t["encode"] + t["decode"]), "peak_mib": memory[name]["peak_mib"]}
        r = rows[name]
        print(f"| {name} | {r['parameters'] / 1e6:.2f}M | {r['encode_img_s']:.2f} | {r['decode_img_s']:.2f} | "
              f"{r['encode_decode_img_s']:.2f} | {r['peak_mib']:.0f} |")
    a, d = rows["vistok conv2d"], rows["diffusers VQModel"]
    print(f"vistok / diffusers: parameters {a['parameters'] / d['parameters']:.4f}×, encode + decode speed "
          f"{a['encode_decode_img_s'] / d['encode_decode_img_s']:.3f}×, peak memory "
          f"{a['peak_mib'] / d['peak_mib']:.3f}×; peak memory method: {memory['vistok conv2d']['method']}")
    print(f"conv_nets.py code lines diffusers' Encoder/Decoder would replace: {sum(lines.values())} ({lines})")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows, "replaceable_lines": lines},
                                              indent=2))


if __name__ == "__main__":
    main()
