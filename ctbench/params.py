"""Method parameters given by a user (``--param``), a tuned-parameters file or a search space,
checked and normalised against the method's declared defaults before anything runs.

Records are keyed on the canonical JSON of the parameters, so one value must have one spelling:
``half_window=3``, ``3.0`` and ``"3"`` all become ``3``. The type of a parameter is that of its
default in ``__init__``:

- ``int`` default: an integer, or a float / string holding a whole number (``3.0``, ``"3"``) -> int;
  ``3.5``, ``"abc"`` or ``true`` are refused;
- ``float`` default: a finite number or a string holding one (``3`` -> ``3.0``, ``"1e-3"``);
- ``bool`` default: ``true`` or ``false`` only;
- ``None`` default annotated ``int | None`` or ``float | None`` (``Optional[...]``): as ``int`` /
  ``float`` above, ``null`` kept;
- any other ``None``, string, list or tuple default (no fixed type): the value is kept as given.

``null`` is always kept (methods use it for "choose automatically"). ``random_state`` is owned by
the runner (every run is seeded from ``--seed``) and cannot be set.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

RUNNER_OWNED = ("random_state",)


def _error(message: str) -> Exception:
    from ctbench.runner import PlanError

    return PlanError(message)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        f = float(value)
        return int(f) if math.isfinite(f) and f.is_integer() else None
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            pass
        try:
            f = float(text)
        except ValueError:
            return None
        return int(f) if math.isfinite(f) and f.is_integer() else None
    return None


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):
        f = float(value)
    elif isinstance(value, str):
        try:
            f = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return f if math.isfinite(f) else None


def normalise_value(method: str, key: str, default: Any, value: Any) -> Any:
    """``value`` converted to the type of ``default``; PlanError when it cannot be."""
    if value is None:
        return None
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise _error(f"method {method!r}: parameter {key!r} takes true or false, got {_shown(value)}")
    if isinstance(default, numbers.Integral):
        converted = _as_int(value)
        if converted is None:
            raise _error(f"method {method!r}: parameter {key!r} takes an integer, got {_shown(value)}")
        return converted
    if isinstance(default, numbers.Real):
        converted_f = _as_float(value)
        if converted_f is None:
            raise _error(f"method {method!r}: parameter {key!r} takes a finite number, got {_shown(value)}")
        return converted_f
    return value


def normalise_params(cls: Any, params: dict[str, Any], method: str | None = None) -> dict[str, Any]:
    """The given parameters checked against ``cls.default_params()`` and converted to the types of
    the defaults (see the module docstring); names are not checked here (the caller does)."""
    method = method or getattr(cls, "name", "") or getattr(cls, "__name__", "method")
    owned = [k for k in params if k in RUNNER_OWNED]
    if owned:
        raise _error(
            f"method {method!r}: parameter {owned[0]!r} is set by the runner (each run is seeded from --seed); "
            f"use --seed instead of --param {owned[0]}"
        )
    defaults = cls.default_params()
    return {k: normalise_value(method, k, _prototype(cls, k, defaults.get(k)), v) for k, v in params.items()}


_OPTIONAL_NUMBER = {"int": 0, "float": 0.0}


def _prototype(cls: Any, key: str, default: Any) -> Any:
    """The value whose type a parameter takes: its default, or for a ``None`` default annotated
    ``int | None`` / ``float | None`` (also ``Optional[int]``), 0 / 0.0."""
    if default is not None:
        return default
    import inspect

    try:
        annotation = inspect.signature(cls.__init__).parameters[key].annotation
    except (KeyError, TypeError, ValueError):
        return None
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    text = text.replace(" ", "").replace("typing.", "")
    for name, proto in _OPTIONAL_NUMBER.items():
        if text in (f"{name}|None", f"None|{name}", f"Optional[{name}]"):
            return proto
    return None


def is_flat(value: Any) -> bool:
    """A scalar (number, bool, string, null) or a list of scalars: what ``--param`` accepts."""
    scalar = (str, int, float, bool, type(None))
    if isinstance(value, list):
        return all(isinstance(v, scalar) for v in value)
    return isinstance(value, scalar)
