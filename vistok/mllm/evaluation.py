"""Measuring an MLLM: understanding (accuracy of free-text answers), generation (the shapes judge's prompt accuracy;
FID/KID through the harness), and text perplexity on held-out text."""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from tqdm.auto import tqdm

from vistok.data.shapes import COLORS, SHAPES


def article(phrase: str) -> str:
    return f"{'an' if phrase[:1].lower() in 'aeiou' else 'a'} {phrase}"


def shape_prompts(per_prompt: int = 1) -> tuple[list[str], list[int], list[int]]:
    """The 24 prompts "a <color> <shape>", each ``per_prompt`` times in a row, with their shape and color indices
    (what the shapes judge is asked to find in the images generated from them)."""
    pairs = [(s, c) for s in range(len(SHAPES)) for c in range(len(COLORS)) for _ in range(per_prompt)]
    names = list(COLORS)
    return ([article(f"{names[c]} {SHAPES[s]}") for s, c in pairs], [s for s, _ in pairs], [c for _, c in pairs])


def shapes_reading(text: str) -> tuple[str | None, str | None]:
    """(color, shape) named first in an answer, before any "on a … background" (whose colors are not the shape's)."""
    head = re.split(r"\bon\b", text.lower(), maxsplit=1)[0]
    words = re.findall(r"[a-z]+", head)
    color = next((w for w in words if w in COLORS), None)
    shape = next((w for w in words if w in SHAPES), None)
    return color, shape


def answer_correct(answer: str, target: str, shapes: bool) -> bool:
    """Shapes: the answer names the target's color and shape. Otherwise: the target class name (or one of its
    comma-separated synonyms) appears in the answer, case-insensitively."""
    if shapes:
        return shapes_reading(answer) == shapes_reading(target) != (None, None)
    names = [n.strip().lower() for n in target.split(",") if n.strip()]
    return any(n in answer.lower() for n in names)


@torch.no_grad()
def understanding_accuracy(model: Any, images: torch.Tensor, targets: list[str], question: str, shapes: bool,
                           batch_size: int = 16, max_new_tokens: int = 16,
                           progress: bool = False) -> dict[str, Any]:
    """Greedy answers to ``question`` for each image, scored against ``targets``."""
    answers: list[str] = []
    for i in tqdm(range(0, len(images), batch_size), desc="answering", disable=not progress):
        answers += model.answer(images[i:i + batch_size], question, max_new_tokens=max_new_tokens)
    correct = [answer_correct(a, t, shapes) for a, t in zip(answers, targets)]
    return {"accuracy": sum(correct) / max(len(correct), 1), "answers": answers, "correct": correct}


@torch.no_grad()
def name_ranks(answers: list[str], targets: list[str], class_names: list[str],
               encoder: str = "minilm") -> dict[str, Any]:
    """How close each free-text answer comes to naming its class, when exact names are rarely hit (classes never
    seen in training): the rank of the target among ``class_names`` by the cosine similarity of their sentence
    embeddings to the answer's (1: no class name is closer to the answer than the right one). Reports top-1/top-5
    rates and the median rank, with their chance levels."""
    from vistok.generators.text import text_encoder

    enc = text_encoder(encoder)
    names = list(dict.fromkeys(class_names))
    sims = enc.encode(list(answers)) @ enc.encode(names).T  # (N, C), unit vectors
    target_sims = sims[torch.arange(len(targets)), torch.tensor([names.index(t) for t in targets])]
    ranks = (sims > target_sims[:, None]).sum(1) + 1
    n = len(names)
    return {"top1": float((ranks == 1).float().mean()), "top5": float((ranks <= 5).float().mean()),
            "median_rank": float(ranks.float().median()), "num_classes": n, "chance_top1": 1 / n,
            "chance_top5": min(5, n) / n, "chance_median_rank": (n + 1) / 2, "encoder": encoder}


@torch.no_grad()
def generate_for_prompts(model: Any, prompts: list[str], batch_size: int = 8, progress: bool = False,
                         seed: int = 0, **sampling: Any) -> torch.Tensor:
    """Images (N, 3, R, R) for the prompts; batch b samples with seed ``seed * 1_000_003 + b``."""
    out = []
    for b, i in enumerate(tqdm(range(0, len(prompts), batch_size), desc="generating", disable=not progress)):
        out.append(model.generate_images(prompts[i:i + batch_size], seed=seed * 1_000_003 + b, **sampling).cpu())
    return torch.cat(out)


def perplexity(model: Any, texts: list[str]) -> float:
    return math.exp(model.text_nll(texts))
