"""Variant method classes: the same parameters as a parent method, other defaults (numpy-free)."""

from __future__ import annotations

import inspect
from typing import Any


def with_defaults(parent: type, **overrides: Any) -> Any:
    """An ``__init__`` for a variant of ``parent``: its parameters with other defaults.

    The variant keeps every parameter (so ``get_params``, cloning and ``--param`` work the same),
    and its signature, which the harness reads, shows the variant's own defaults.
    """
    base = inspect.signature(parent.__init__)
    unknown = set(overrides) - set(base.parameters)
    if unknown:
        raise TypeError(f"not {parent.__name__} parameters: {sorted(unknown)}")
    sig = base.replace(parameters=[p.replace(default=overrides[p.name]) if p.name in overrides else p
                                   for p in base.parameters.values()])

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        bound = sig.bind(self, *args, **kwargs)
        bound.apply_defaults()
        parent.__init__(*bound.args, **bound.kwargs)

    __init__.__signature__ = sig  # type: ignore[attr-defined]
    return __init__
