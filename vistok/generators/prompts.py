"""Resolve a prompt to a class of a class-conditional model: an integer index, a wnid, an exact class name, the
one class name contained in the prompt ("a red circle on a blue background" → "red circle"), or a close fuzzy
match. Anything else is a :class:`PromptError` that lists the closest names."""

from __future__ import annotations

import difflib
import re

from vistok.errors import VistokError


class PromptError(VistokError, ValueError):
    pass


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


def resolve_prompt(prompt: str, class_names: list[str], class_ids: list[str] | None = None) -> int:
    """Class index for ``prompt``; raises :class:`PromptError` (one line, with the closest names) if none fits."""
    if prompt is None or not prompt.strip():
        raise PromptError("empty prompt; give a class name (e.g. " + ", ".join(repr(n) for n in class_names[:3]) + ")")
    text = prompt.strip()
    if text.lstrip("-").isdigit():
        index = int(text)
        if not 0 <= index < len(class_names):
            raise PromptError(f"class index {index} is out of range; this model has classes 0..{len(class_names) - 1}")
        return index
    if class_ids and text in class_ids:
        return class_ids.index(text)
    norm = _norm(text)
    names = [_norm(n) for n in class_names]
    if norm in names:
        return names.index(norm)
    # Class names that appear as whole words in the prompt, ignoring any that is part of a longer one found
    # ("shark" inside "great white shark"); more than one left is ambiguous.
    padded = f" {norm} "
    contained = [i for i, n in enumerate(names) if n and f" {n} " in padded]
    best = [i for i in contained if not any(j != i and f" {names[i]} " in f" {names[j]} " for j in contained)]
    if len(best) == 1:
        return best[0]
    if best:
        raise PromptError(f"prompt {prompt!r} is ambiguous: it names {[class_names[i] for i in best]}")
    close = difflib.get_close_matches(norm, names, n=5, cutoff=0.0)
    if close and difflib.SequenceMatcher(None, norm, close[0]).ratio() >= 0.85:
        return names.index(close[0])
    suggestions = [class_names[names.index(c)] for c in close]
    raise PromptError(f"prompt {prompt!r} matches no class of this model; closest: {suggestions}")
