"""A small CNN "judge" that scores prompt following on captioned-shapes samples: did the generator draw the prompted
shape in the prompted color? It is trained only on real :class:`ShapesDataset` images (never on generated ones, so
it cannot learn a generator's quirks) and its held-out accuracy is reported next to its verdicts, so a reader can
tell how far to trust them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from vistok.data.shapes import COLORS, SHAPES, ShapesDataset

JUDGE_INPUT_SIZE = 32  # images are resized to this first, so the judge costs the same at any resolution


class ShapesJudge(nn.Module):
    """Three conv layers (32-64-64 channels), average+max global pooling, and two linear heads (shape, color).

    Takes (B, 3, R, R) images in [-1, 1] at any R; returns ``(shape_logits (B, num_shapes), color_logits
    (B, num_colors))``. Max pooling next to average pooling keeps a small shape's color from being washed out by
    the background.
    """

    def __init__(self, num_shapes: int = len(SHAPES), num_colors: int = len(COLORS)) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
        )
        self.shape_head = nn.Linear(128, num_shapes)
        self.color_head = nn.Linear(128, num_colors)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.shape[-2:] != (JUDGE_INPUT_SIZE, JUDGE_INPUT_SIZE):
            images = F.interpolate(images, size=(JUDGE_INPUT_SIZE, JUDGE_INPUT_SIZE), mode="bilinear",
                                   antialias=True, align_corners=False)
        h = self.features(images)
        pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        return self.shape_head(pooled), self.color_head(pooled)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted (shape indices, color indices), both (B,) int64 on CPU; runs in eval mode on the judge's device."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        shapes, colors = [], []
        for start in range(0, len(images), batch_size):
            shape_logits, color_logits = self(images[start:start + batch_size].to(device).float())
            shapes.append(shape_logits.argmax(1).cpu())
            colors.append(color_logits.argmax(1).cpu())
        self.train(was_training)
        return torch.cat(shapes), torch.cat(colors)


def chance_level(num_shapes: int = len(SHAPES), num_colors: int = len(COLORS)) -> float:
    """Accuracy of guessing at random, for "both shape and color right": 1 / (num_shapes × num_colors)."""
    return 1.0 / (num_shapes * num_colors)


def judge_accuracy(judge: ShapesJudge, images: torch.Tensor, shape_idx: torch.Tensor | list[int],
                   color_idx: torch.Tensor | list[int]) -> dict[str, float]:
    """Fractions of ``images`` whose shape, color, and both are recognized as the given indices."""
    shape_idx, color_idx = torch.as_tensor(shape_idx).long().cpu(), torch.as_tensor(color_idx).long().cpu()
    if not len(images) == len(shape_idx) == len(color_idx) > 0:
        raise ValueError(f"need as many (> 0) images as targets, got {len(images)} images, {len(shape_idx)} shapes, "
                         f"{len(color_idx)} colors")
    pred_shape, pred_color = judge.predict(images)
    shape_ok, color_ok = pred_shape == shape_idx, pred_color == color_idx
    return {"shape": shape_ok.float().mean().item(), "color": color_ok.float().mean().item(),
            "both": (shape_ok & color_ok).float().mean().item()}


def _as_tensors(dataset: ShapesDataset) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    items = [dataset[i] for i in range(len(dataset))]
    return (torch.stack([it["image"] for it in items]), torch.tensor([it["shape"] for it in items]),
            torch.tensor([it["color"] for it in items]))


def train_judge(resolution: int = 32, steps: int = 500, batch_size: int = 128, seed: int = 0,
                device: str | torch.device = "cpu", progress: bool = True, train_size: int = 16000,
                held_out_size: int = 2000, lr: float = 3e-3,
                rotate: bool = True) -> tuple[ShapesJudge, dict[str, float]]:
    """Train a :class:`ShapesJudge` on real shapes (data seed ``seed``) and measure it on held-out shapes (data
    seed ``seed + 1``), both drawn with ``rotate`` as the generator's data was. Returns ``(judge in eval mode,
    {"shape", "color", "both"} held-out accuracies)``."""
    torch.manual_seed(seed)
    train_images, train_shapes, train_colors = _as_tensors(ShapesDataset(resolution, train_size, seed=seed,
                                                                                rotate=rotate))
    judge = ShapesJudge().to(device)
    opt = torch.optim.AdamW(judge.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    order, start = torch.randperm(train_size), 0
    judge.train()
    for _ in tqdm(range(steps), desc="training judge", disable=not progress):
        if start + batch_size > train_size:  # reshuffle at the end of every epoch
            order, start = torch.randperm(train_size), 0
        idx = order[start:start + batch_size]
        start += batch_size
        shape_logits, color_logits = judge(train_images[idx].to(device))
        loss = F.cross_entropy(shape_logits, train_shapes[idx].to(device)) + \
            F.cross_entropy(color_logits, train_colors[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    judge.eval()
    held_images, held_shapes, held_colors = _as_tensors(ShapesDataset(resolution, held_out_size, seed=seed + 1,
                                                                             rotate=rotate))
    return judge, judge_accuracy(judge, held_images, held_shapes, held_colors)
