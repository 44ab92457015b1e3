"""Helpers for user-facing names: "did you mean" suggestions, names cut to fit a file name."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def fit_name(safe: str, original: str, limit: int) -> str:
    """``safe`` (a name made file-name safe from ``original``) cut to at most ``limit`` bytes when
    longer, ending in a hash of ``original`` so that different long names stay apart."""
    if len(safe.encode()) <= limit:
        return safe
    import hashlib

    digest = hashlib.sha256(original.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return safe.encode()[: limit - 17].decode("utf-8", "ignore") + "-" + digest


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A ' (did you mean X?)' suffix for an unknown name, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"
