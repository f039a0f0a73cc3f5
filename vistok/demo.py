"""The demo (``make demo``): the whole pipeline on the built-in captioned shapes, on CPU, in minutes.

1. train a small VQ tokenizer (configs/demo/tokenizer.yaml) and measure reconstruction on held-out shapes;
2. train a small class-conditional GPT on its tokens (configs/demo/generator.yaml);
3. train a small judge CNN on real shapes images (never generated ones);
4. sample ``--num-per-prompt`` images for every shape×color prompt, and let the judge score prompt following:
   a sample counts when both the prompted shape and the prompted color are recognized (chance: 1/24).

The demo data are upright shapes (``rotate: false`` in configs/demo/): with random rotations a generator this small
does not learn the geometry of squares and triangles within the demo's ten CPU minutes (measured, CFG 3 and
temperature 1: 51-62 % prompt accuracy with rotations; squares and triangles came out as blobs). Samples use CFG 2.0
and temperature 0.5: on a trained demo generator, CFG 3 / temperature 1 gave 62 %, CFG 2 / 0.7 83 %, CFG 2 / 0.5 87 %
(192 samples each).

Writes runs/demo/{tokenizer,generator}/, grids, recon/ and report.json; the last lines printed summarize them.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from vistok.errors import VistokError

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "demo"


def run_demo(out: Path, tokenizer_steps: int | None = None, generator_steps: int | None = None,
             num_per_prompt: int = 8, cfg_scale: float = 2.0, temperature: float = 0.5,
             progress: bool = True) -> dict:
    from vistok.data import ShapesDataset
    from vistok.data.imageio import save_grid
    from vistok.data.judge import chance_level, judge_accuracy, train_judge
    from vistok.data.shapes import COLORS
    from vistok.data.sources import data_cfg_from_arg
    from vistok.generate import SamplingSettings, sample_prompts
    from vistok.metrics.evaluate import evaluate_reconstruction
    from vistok.training.config import load_config
    from vistok.training.run import run_training

    start = time.perf_counter()
    seconds: dict[str, float] = {}

    def lap(name: str, t0: float) -> None:
        seconds[name] = round(time.perf_counter() - t0, 1)

    # 1. tokenizer
    t0 = time.perf_counter()
    overrides = [f"run_dir={out / 'tokenizer'}"] + ([f"train.steps={tokenizer_steps}"] if tokenizer_steps else [])
    tokenizer = run_training(load_config(CONFIGS / "tokenizer.yaml", overrides), overwrite=True, progress=progress)
    lap("tokenizer_training", t0)
    t0 = time.perf_counter()
    data_cfg = load_config(CONFIGS / "tokenizer.yaml").data
    rotate = bool(data_cfg.get("rotate", True))  # the held-out set and the judge see the demo data's geometry
    held_out = ShapesDataset(**{k: v for k, v in data_cfg_from_arg("shapes", tokenizer.resolution, 1000).items()
                                if k != "name"}, rotate=rotate)
    recon = evaluate_reconstruction(tokenizer, held_out, pairs_path=out / "recon" / "pairs.png",
                                    csv_path=out / "recon" / "per_image.csv", progress=progress)
    (out / "recon" / "recon.json").write_text(json.dumps(recon, indent=2))
    lap("reconstruction_eval", t0)

    # 2. generator
    t0 = time.perf_counter()
    overrides = [f"run_dir={out / 'generator'}", f"tokenizer={out / 'tokenizer'}",
                 f"token_cache_dir={out / 'token_cache'}"]
    overrides += [f"train.steps={generator_steps}"] if generator_steps else []
    run_training(load_config(CONFIGS / "generator.yaml", overrides), overwrite=True, progress=progress)
    lap("generator_training", t0)

    # 3. judge, trained on real images only
    t0 = time.perf_counter()
    judge, judge_heldout = train_judge(resolution=tokenizer.resolution, progress=progress, rotate=rotate)
    lap("judge_training", t0)

    # 4. sample every shape×color prompt and judge it
    t0 = time.perf_counter()
    names = ShapesDataset(resolution=tokenizer.resolution, size=1).class_names
    settings = SamplingSettings(num_per_prompt=num_per_prompt, cfg_scale=cfg_scale, temperature=temperature, seed=0)
    manifest = sample_prompts(out / "generator", list(names), out / "samples", settings, progress=progress)
    images = torch.cat([manifest["images"][p] for p in range(len(names))])
    labels = torch.tensor([e["class_index"] for e in manifest["prompts"]]).repeat_interleave(num_per_prompt)
    acc = judge_accuracy(judge, images, labels // len(COLORS), labels % len(COLORS))  # label = shape·6 + color
    save_grid(images, out / "prompts_grid.png", nrow=num_per_prompt * 3)  # a row: one shape in 3 colors
    lap("sampling_and_judging", t0)

    report = {
        "recon_psnr": round(recon["psnr"], 3), "recon_ssim": round(recon["ssim"], 4),
        "codebook_usage": round(recon["codebook_usage"], 4), "bits_per_image": recon["bits_per_image"],
        "recon_images": recon["num_images"],
        "prompt_accuracy": round(acc["both"], 4), "prompt_shape_accuracy": round(acc["shape"], 4),
        "prompt_color_accuracy": round(acc["color"], 4), "prompt_chance": round(chance_level(), 4),
        "prompt_samples": len(images), "judge_heldout_accuracy": {k: round(v, 4) for k, v in judge_heldout.items()},
        "cfg_scale": cfg_scale, "temperature": temperature, "seconds": round(time.perf_counter() - start, 1),
        "stage_seconds": seconds,
        "machine": {"platform": platform.platform(), "cpus": torch.get_num_threads(),
                    "device": "cuda" if torch.cuda.is_available() else "cpu", "torch": torch.__version__},
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--tokenizer-steps", type=int, default=None, help="override the config's step count")
    p.add_argument("--generator-steps", type=int, default=None, help="override the config's step count")
    p.add_argument("--num-per-prompt", type=int, default=8)
    p.add_argument("--cfg-scale", type=float, default=2.0)
    p.add_argument("--temperature", type=float, default=0.5)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out)
    try:
        r = run_demo(out, args.tokenizer_steps, args.generator_steps, args.num_per_prompt, args.cfg_scale,
                     args.temperature, progress=not args.no_progress)
    except VistokError as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 2
    print("\n== vistok demo ==")
    print(f"tokenizer  {out / 'tokenizer'}   generator  {out / 'generator'}")
    print(f"grids      {out / 'prompts_grid.png'}  {out / 'recon' / 'pairs.png'}  {out / 'samples'}/")
    print(f"recon_psnr {r['recon_psnr']:.2f} dB  ssim {r['recon_ssim']:.3f}  (held-out shapes, {r['recon_images']} "
          f"images, target >= 26 dB)")
    print(f"prompt_accuracy {r['prompt_accuracy']:.1%} (shape and color right; shape {r['prompt_shape_accuracy']:.1%},"
          f" color {r['prompt_color_accuracy']:.1%}; chance {r['prompt_chance']:.1%}; {r['prompt_samples']} samples"
          f" at CFG {r['cfg_scale']}, temperature {r['temperature']})")
    print(f"seconds {r['seconds']:.0f}  ({', '.join(f'{k} {v:.0f}' for k, v in r['stage_seconds'].items())})")
    print(f"report     {out / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
