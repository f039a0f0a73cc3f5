"""Generation benchmark, one run on CPU, printed as markdown tables (docs/generators.md quotes them).

1. Throughput at 256 tokens (16×16 grid), batch ``--batch``, greedy decoding, no CFG: our GPT with its static KV
   cache vs Hugging Face ``LlamaForCausalLM.generate`` of the same width/depth/heads/SwiGLU width/vocabulary (one
   BOS token as the prefix, like our one class token; HF's default dynamic cache, SDPA attention), and vs our own
   decoding without the cache (recompute the prefix every step; ``benchmarks/sampling.py`` sweeps that one).
2. Wall time per image on a 16×16 token grid with CFG (doubled batch), at batch 1 (latency) and ``--batch``
   (throughput): next-token vs token-shuffle s=2 vs next-cell 2×2 (xAR) with the discrete head in the shift layout
   (N = 4 tokens fed per step) and in the content+query layout (2N), with xAR's denoising transformer (entity_head
   flow, ``--flow-steps`` Euler–Maruyama steps per cell, each a backbone pass) and with the per-token flow head
   (flow_mlp: one backbone pass per cell, then its default 25 Euler steps of the small MLP), and xAR's own setting
   of 4 cells of 8×8 with 50 steps, same backbone size, random weights (speed does not depend on training);
   ``--only`` picks rows by name (next-token always runs, as the reference).
3. Quality (``--runs name=DIR ...``, generators trained with the same budget on captioned shapes, class- or
   text-conditional): prompt accuracy by the shapes judge (a CNN trained on real shapes only; shape and color both
   right, chance 1/24) on ``--num-prompts`` held-out prompts × ``--num-per-prompt`` samples, and FID/KID of those
   samples against ``--fid-real`` training images through the harness (``vistok.metrics.fid``; with a few hundred
   images FID is strongly biased upward, so compare the rows with each other only).

    python benchmarks/generation.py [--skip-quality] [--skip-throughput] [--runs next_token=runs/a cell2=runs/c]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from vistok.generators.gpt import GPT
from vistok.generators.xar import XAR
from vistok.layers import swiglu_hidden_dim
from vistok.spec import TokenSpec


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def throughput(args) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    side = 16
    spec = TokenSpec.vocab(args.vocab, grid=(side, side))
    L = spec.length
    ours = GPT(spec.to_dict(), num_classes=10, dim=args.dim, depth=args.depth, heads=args.heads).eval()
    torch.nn.init.normal_(ours.head.output.weight, std=0.02)  # non-degenerate logits
    cfg = LlamaConfig(vocab_size=args.vocab, hidden_size=args.dim, intermediate_size=swiglu_hidden_dim(args.dim),
                      num_hidden_layers=args.depth, num_attention_heads=args.heads, num_key_value_heads=args.heads,
                      max_position_embeddings=L + 8, bos_token_id=0, eos_token_id=None, pad_token_id=0,
                      attention_bias=False, mlp_bias=False, tie_word_embeddings=False)
    hf = LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa").eval()
    n_ours = sum(p.numel() for p in ours.parameters())
    n_hf = sum(p.numel() for p in hf.parameters())
    labels = torch.arange(args.batch) % 10
    bos = torch.zeros(args.batch, 1, dtype=torch.long)

    def run_ours(use_cache=True):
        with torch.no_grad():
            return ours.generate(labels, temperature=0, use_cache=use_cache)

    def run_hf():
        with torch.no_grad():
            return hf.generate(bos, max_new_tokens=L, min_new_tokens=L, do_sample=False,
                               attention_mask=torch.ones_like(bos))

    assert run_hf().shape[1] == L + 1
    rows = [("ours, static KV cache", timed(run_ours, args.repeats)),
            ("HF LlamaForCausalLM.generate", timed(run_hf, args.repeats)),
            ("ours, no cache (recompute)", timed(lambda: run_ours(False), 1))]
    base = rows[0][1]
    print(f"\n### Throughput: {L} tokens, batch {args.batch}, dim {args.dim}, depth {args.depth}, heads "
          f"{args.heads}, vocab {args.vocab} (ours {n_ours / 1e6:.1f}M params, HF {n_hf / 1e6:.1f}M), greedy, "
          f"torch threads {torch.get_num_threads()}\n")
    print("| decoder | tokens/s | ours-with-cache speed-up |\n|---|---|---|")
    for name, sec in rows:
        print(f"| {name} | {args.batch * L / sec:,.0f} | {sec / base:.2f}× |")


def per_image_time(args) -> None:
    spec = TokenSpec.vocab(args.vocab, grid=(16, 16), code_dim=8)
    kw = {"token_spec": spec.to_dict(), "num_classes": 10, "dim": args.dim, "depth": args.depth, "heads": args.heads}
    cell = {"name": "cell", "size": 2}
    steps = args.flow_steps
    models = {"next-token (s=1)": GPT(**kw), "token-shuffle s=2": GPT(**kw, window=2),
              "next-cell 2×2 (xAR discrete, shift layout)": XAR(**kw, entity=cell, entity_head="discrete",
                                                              layout="shift"),
              "next-cell 2×2 (xAR discrete, query layout)": XAR(**kw, entity=cell, entity_head="discrete",
                                                              layout="query"),
              f"next-cell 2×2 (xAR flow: the transformer denoises, {steps} steps/cell)":
                  XAR(**kw, entity=cell, entity_head="flow", flow_steps=steps),
              "next-cell 2×2 (xAR flow_mlp: per-token MLP head, 25 steps/cell)":
                  XAR(**kw, entity=cell, entity_head="flow_mlp"),
              "next-cell 8×8 (xAR flow, 4 cells as xAR's clusters=4, 50 steps/cell)":
                  XAR(**kw, entity={"name": "cell", "size": 8}, entity_head="flow", flow_steps=50)}
    if args.only:  # the first row (the next-token reference) always runs
        models = {k: v for i, (k, v) in enumerate(models.items()) if i == 0 or any(o in k for o in args.only)}
    for model in models.values():
        if getattr(model, "entity_head", "discrete") != "discrete":
            model.set_codebook(torch.randn(args.vocab, 8, generator=torch.Generator().manual_seed(0)))
    batches = sorted({1, args.batch})  # batch 1: latency of one image; batch B: throughput
    print(f"\n### Wall time per image: 16×16 tokens, CFG 2.0 (doubled batch), dim {args.dim}, depth {args.depth}, "
          f"torch threads {torch.get_num_threads()}\n")
    print("| generator | decoding steps | backbone passes | " +
          " | ".join(f"s / image, batch {b} | speed-up" for b in batches) + " |")
    print("|---|---|---|" + "---|---|" * len(batches))
    base: dict[int, float] = {}
    for name, model in models.items():
        model.eval()
        steps = len(model.entities) if isinstance(model, XAR) else spec.length // model.window ** 2
        cells = []
        for b in batches:
            labels = torch.arange(b) % 10
            def run(m=model, y=labels):
                return m.generate(y, cfg_scale=2.0, generator=torch.Generator().manual_seed(0))

            sec = timed(run, args.repeats) / b
            base.setdefault(b, sec)
            cells.append(f"{sec:.4f} | {base[b] / sec:.2f}×")
        print(f"| {name} | {steps} | {backbone_passes(model)} | " + " | ".join(cells) + " |", flush=True)


def backbone_passes(model) -> int:
    """Backbone passes per image: one per token (next-token), window or entity; xAR's denoising transformer runs
    once per entity and sampling step."""
    if isinstance(model, XAR):
        return len(model.entities) * (model.flow_steps if model.entity_head == "flow" else 1)
    return model.spec.length // model.window ** 2


def load_generator(path: str):
    from vistok.hub import load_pretrained

    return load_pretrained(path, kind="generator").eval()


def quality(args) -> None:
    from vistok.data.judge import chance_level, judge_accuracy, train_judge
    from vistok.data.shapes import COLORS, ShapesDataset
    from vistok.hub import load_pretrained
    from vistok.metrics import fid

    runs = dict(r.split("=", 1) for r in args.runs)
    first = next(iter(runs.values()))
    tokenizer = load_pretrained(args.tokenizer or Path(first) / "tokenizer", kind="tokenizer").eval()
    res, rotate = tokenizer.resolution, not args.upright
    judge, judge_held = train_judge(resolution=res, steps=args.judge_steps, train_size=args.judge_train,
                                    held_out_size=500, progress=False, rotate=rotate)
    held = ShapesDataset(resolution=res, size=args.num_prompts, seed=4242, rotate=rotate)
    prompts = [held[i] for i in range(len(held))]
    real = torch.stack([it["image"] for it in ShapesDataset(resolution=res, size=args.fid_real, seed=0,
                                                            rotate=rotate)])
    print(f"\n### Quality on captioned shapes ({res}×{res}, {'upright' if args.upright else 'rotated'}): "
          f"{len(prompts)} held-out prompts × {args.num_per_prompt} samples, CFG {args.cfg_scale}, temperature "
          f"{args.temperature}; judge held-out accuracy {judge_held['both']:.3f} (chance {chance_level():.3f}); "
          f"FID/KID vs {args.fid_real} training images (vistok.metrics.fid, Inception '{args.inception}')\n")
    print("| generator | steps/image | backbone passes | prompt acc. (shape+color) | shape acc. | color acc. | FID | "
          "KID ×10³ | s / image |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, path in runs.items():
        gen = load_generator(path)
        # text-conditional models get the held-out captions, class-conditional ones their class labels
        conditions = [p["caption"] if gen.conditions_on_text else p["shape"] * len(COLORS) + p["color"]
                      for p in prompts for _ in range(args.num_per_prompt)]
        t0 = time.perf_counter()
        images = []
        for i in range(0, len(conditions), args.batch):
            chunk = conditions[i:i + args.batch]
            tok = gen.generate(chunk if gen.conditions_on_text else torch.tensor(chunk), cfg_scale=args.cfg_scale,
                               temperature=args.temperature, generator=torch.Generator().manual_seed(i))
            images.append(tokenizer.decode(tok))
        sec = (time.perf_counter() - t0) / len(conditions)
        images = torch.cat(images)
        shapes = [p["shape"] for p in prompts for _ in range(args.num_per_prompt)]
        colors = [p["color"] for p in prompts for _ in range(args.num_per_prompt)]
        acc = judge_accuracy(judge, images, shapes, colors)
        m = fid(images, real, inception=args.inception, metrics=("fid", "kid"), resolution=res, progress=False)
        steps = len(gen.entities) if isinstance(gen, XAR) else gen.spec.length // gen.window ** 2
        print(f"| {name} | {steps} | {backbone_passes(gen)} | {acc['both']:.3f} | {acc['shape']:.3f} | "
              f"{acc['color']:.3f} | {m['fid']:.1f} | {1e3 * m['kid']:.1f} | {sec:.3f} |", flush=True)
        if args.grid_dir:
            from vistok.data.imageio import save_grid

            save_grid(images[:args.num_per_prompt * 8], Path(args.grid_dir) / f"{name}.png", nrow=args.num_per_prompt)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--skip-throughput", action="store_true", help="only the per-image table of the speed part")
    p.add_argument("--flow-steps", type=int, default=50, help="sampling steps per cell of xAR's denoising transformer")
    p.add_argument("--only", nargs="*", default=[], help="per-image rows whose name contains one of these")
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--runs", nargs="*", default=[], help="name=generator folder (or checkpoints/step_N/model)")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: <first run>/tokenizer)")
    p.add_argument("--num-prompts", type=int, default=24)
    p.add_argument("--num-per-prompt", type=int, default=5)
    p.add_argument("--cfg-scale", type=float, default=3.0)
    p.add_argument("--fid-real", type=int, default=480)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--upright", action="store_true", help="upright shapes (the demo's data: rotate=False)")
    p.add_argument("--inception", default="auto", help="auto | download | packaged | <path> (docs/evaluation.md)")
    p.add_argument("--judge-steps", type=int, default=300)
    p.add_argument("--judge-train", type=int, default=4000)
    p.add_argument("--grid-dir", default=None)
    args = p.parse_args()
    if not args.skip_speed:
        if not args.skip_throughput:
            throughput(args)
        per_image_time(args)
    if not args.skip_quality and args.runs:
        quality(args)


if __name__ == "__main__":
    main()
