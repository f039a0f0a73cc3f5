"""Training data of the ``mllm`` stage: cached image tokens + their texts, turned into mixed-objective sequences.

Item ``i`` (a :class:`~vistok.data.imagefolder.DrawIndex` carrying its epoch) draws its objective from the weights
(understanding / generation / text) and, for generation, whether its prompt is dropped to ``<uncond>``, from a
random stream keyed by (seed, index, epoch): any access order, worker count or resume point sees the same items.
Items are padded to one length (the longest any item can be) so the default collate stacks them; the training step
trims the padding columns no row uses.

Held-out text for the perplexity check comes from :func:`stdlib_text`: the docstrings of a fixed list of Python
standard-library modules (English prose that ships with every Python, so the check runs offline).
"""

from __future__ import annotations

import inspect
import random
from typing import Any

import torch
from torch.utils.data import Dataset

from vistok.errors import ConfigError
from vistok.mllm.sequences import ROLES, SequenceBuilder, collate

QUESTION = "What is in this image?"
_TRAIN_MODULES = ("argparse", "collections", "json", "logging", "pathlib", "subprocess", "threading", "unittest",
                  "datetime", "decimal", "fractions", "functools", "itertools", "random", "statistics", "string",
                  "textwrap", "zipfile", "tarfile", "csv", "calendar", "heapq", "bisect", "shutil")
_HELD_OUT_MODULES = ("asyncio", "email", "http.client", "sqlite3", "urllib.request", "xml.dom.minidom", "pickle",
                     "difflib", "socket", "tempfile")


def stdlib_text(split: str = "train", chunk_chars: int = 400) -> list[str]:
    """Paragraph chunks (≈``chunk_chars`` characters) of standard-library docstrings; ``held_out`` uses modules the
    ``train`` split never sees."""
    import importlib

    modules = _TRAIN_MODULES if split == "train" else _HELD_OUT_MODULES
    chunks: list[str] = []
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ImportError:  # a trimmed Python; the other modules still give text
            continue
        docs = [inspect.getdoc(module) or ""]
        docs += [inspect.getdoc(obj) or "" for _, obj in sorted(vars(module).items())
                 if (inspect.isclass(obj) or inspect.isfunction(obj)) and getattr(obj, "__module__", "") == name]
        current = ""
        for doc in docs:
            for para in doc.split("\n\n"):
                para = " ".join(para.split())
                if len(para) < 40 or ">>>" in para:
                    continue
                current = f"{current} {para}".strip()
                if len(current) >= chunk_chars:
                    chunks.append(current[:chunk_chars * 2])
                    current = ""
    return chunks


class MLLMDataset(Dataset):
    """tokens: (N, L[, C]) cached image tokens; prompts: N generation prompts (captions); answers: N understanding
    answers; objectives: weights by role; texts: plain-text chunks for the ``text`` objective."""

    def __init__(self, builder: SequenceBuilder, tokens: torch.Tensor, prompts: list[str], answers: list[str],
                 objectives: dict[str, float], prompt_dropout: float = 0.1, seed: int = 0,
                 texts: list[str] | None = None, question: str = QUESTION) -> None:
        unknown = set(objectives) - set(ROLES)
        if unknown:
            raise ConfigError(f"objectives has unknown keys {sorted(unknown)}; use {list(ROLES)}")
        self.weights = [float(objectives.get(r, 0.0)) for r in ROLES]
        if sum(self.weights) <= 0 or min(self.weights) < 0:
            raise ConfigError(f"objectives need non-negative weights with a positive sum, got {objectives}")
        if self.weights[2] > 0 and not texts:
            raise ConfigError("objectives.text > 0 needs text chunks")
        if not len(tokens) == len(prompts) == len(answers) > 0:
            raise ConfigError(f"need as many (> 0) images, prompts and answers: {len(tokens)}, {len(prompts)}, "
                              f"{len(answers)}")
        self.builder, self.tokens, self.prompts, self.answers = builder, tokens, prompts, answers
        self.prompt_dropout, self.seed, self.texts, self.question = float(prompt_dropout), seed, texts or [], question
        self.token_shape = tuple(tokens.shape[1:])
        self.length = self._max_length()

    def _max_length(self) -> int:
        """The longest item any draw can give (image segments have one length; texts differ in their words)."""
        t = self.tokens[0]
        longest = 0
        if self.weights[0]:
            longest = max(len(self.builder.understanding(t, self.question, a).input_ids) for a in set(self.answers))
        if self.weights[1]:
            longest = max([longest, len(self.builder.generation(None, t).input_ids),
                           *(len(self.builder.generation(p, t).input_ids) for p in set(self.prompts))])
        if self.weights[2]:
            longest = max([longest, *(len(self.builder.text(x).input_ids) for x in self.texts)])
        return longest

    def __len__(self) -> int:
        return len(self.tokens)

    def sequence(self, index: int):
        rng = random.Random(f"mllm/{self.seed}/{getattr(index, 'epoch', 0)}/{int(index)}")
        role = rng.choices(ROLES, weights=self.weights)[0]
        i = int(index)
        if role == "understanding":
            return self.builder.understanding(self.tokens[i], self.question, self.answers[i])
        if role == "generation":
            drop = rng.random() < self.prompt_dropout
            return self.builder.generation(None if drop else self.prompts[i], self.tokens[i])
        return self.builder.text(self.texts[(i + rng.randrange(len(self.texts))) % len(self.texts)])

    def __getitem__(self, index: int) -> dict[str, Any]:
        batch = collate([self.sequence(index)], self.builder.tok.pad_token_id, self.token_shape, self.length)
        return {k: v[0] for k, v in batch.items()}
