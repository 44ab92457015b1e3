"""The protocol probe: change what a method must never see, and watch its predictions.

After ``fit``, the values hidden from a method by the protocol are changed in place: the test
set's property values and the target spectra of the calibration pool except the standards'.
Everything a method is given (source calibration, the standards, the spectra to predict, the
unlabelled test spectra of a transductive method) stays as it was. A method that keeps the
protocol therefore predicts exactly as before; one that reads hidden values predicts differently.

The change reaches every copy of the kit's task that a method could find in this process:

- every Task of the kit's card in the build cache ``ctbench.tasks._BUILT`` (what
  ``build_task(load_card(...))`` returns), changed in place, together with the arrays they share
  (outer-split views, single-property views);
- the bench's own task, which is also a local variable (``task``) of the frame that calls
  ``transfer`` and ``predict``, as in the runner (a method walking ``inspect.stack()`` finds it);
- a task built afresh while the probe runs (``build_task`` with another ``data_dir``, or after
  the cache was cleared): ``ctbench.tasks._build`` is wrapped to change it too.

Every value is restored when the probe ends, whatever the method did.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PROBE_SEED = 20240611


@dataclass
class Changed:
    """What the probe changed, and how to put it back."""

    saved: list[tuple[np.ndarray, np.ndarray, np.ndarray, bool]] = field(default_factory=list)
    """(array, row indices, original rows, was writeable), in the order they were changed."""
    tasks: int = 0
    test_values: int = 0
    pool_spectra: int = 0
    unreachable: list[str] = field(default_factory=list)

    def owns(self, a: np.ndarray) -> bool:
        return any(np.shares_memory(a, arr) for arr, *_ in self.saved)

    def restore(self) -> None:
        for arr, rows, values, writeable in reversed(self.saved):
            arr[rows] = values
            if not writeable:
                arr.setflags(write=False)
        self.saved.clear()


def _hidden_rows(task: Any, standard_groups: set[str]) -> tuple[np.ndarray, np.ndarray]:
    """(test rows, pool rows that are not standards) of a task's own split."""
    pool = np.asarray(task.pool_rows)
    groups = np.asarray(task.groups).astype(str)
    hidden_pool = pool[~np.isin(groups[pool], list(standard_groups))]
    return np.asarray(task.test_rows), hidden_pool


def _change(changed: Changed, arr: np.ndarray, rows: np.ndarray, new: np.ndarray, what: str) -> bool:
    if rows.size == 0:
        return False
    if changed.owns(arr):  # the same memory as an array already changed (a view of it)
        return False
    writeable = bool(arr.flags.writeable)
    if not writeable:
        try:
            arr.setflags(write=True)
        except ValueError:
            changed.unreachable.append(what)
            return False
    changed.saved.append((arr, rows, np.array(arr[rows], copy=True), writeable))
    arr[rows] = new
    return True


def change_task(changed: Changed, task: Any, standard_groups: set[str]) -> None:
    """Change the hidden values of one Task in place (recording the originals in ``changed``)."""
    rng = np.random.default_rng(PROBE_SEED)
    test_rows, hidden_pool = _hidden_rows(task, standard_groups)
    y = task.y
    old_y = np.asarray(y[test_rows], dtype=float)
    scale = np.nanstd(old_y, axis=0) + 1.0
    # reversed, negated, shifted and jittered: no hidden value keeps its value
    new_y = -2.0 * old_y[::-1] + 5.0 * scale + rng.normal(scale=scale, size=old_y.shape)
    touched = _change(changed, y, test_rows, new_y, f"y of task {task.name!r}")
    X = task.X_target
    old_X = np.asarray(X[hidden_pool], dtype=float)
    new_X = old_X[::-1] * 1.5 + rng.normal(scale=float(np.nanstd(old_X)) + 1e-3, size=old_X.shape)
    touched = _change(changed, X, hidden_pool, new_X, f"X_target of task {task.name!r}") or touched
    if touched:
        changed.tasks += 1
        changed.test_values = max(changed.test_values, int(old_y.size))
        changed.pool_spectra = max(changed.pool_spectra, int(hidden_pool.size))


@contextmanager
def hidden_values_changed(task: Any, standard_rows: np.ndarray, also: tuple[Any, ...] = ()) -> Iterator[Changed]:
    """Within the block, the hidden values of ``task``, of the tasks in ``also`` and of every
    Task of the same card that this process holds (or builds) are changed; ``standard_rows``
    (rows of ``task``) are the standards, whose values stay. Everything is restored on exit."""
    import ctbench.tasks as tasks_mod

    groups = set(np.asarray(task.groups)[np.asarray(standard_rows)].astype(str).tolist())
    name = task.card.name
    changed = Changed()
    original_build = getattr(tasks_mod, "_build", None)

    def build_changed(card: Any, data_dir: Any = None) -> Any:
        built = original_build(card, data_dir)
        if getattr(card, "name", None) == name:
            change_task(changed, built, groups)
        return built

    try:
        for other in list(getattr(tasks_mod, "_BUILT", {}).values()):
            if getattr(getattr(other, "card", None), "name", None) == name:
                change_task(changed, other, groups)
        for t in (*also, task):  # a view of a cached task adds nothing; a private copy does
            change_task(changed, t, groups)
        if original_build is not None:
            tasks_mod._build = build_changed
        yield changed
    finally:
        if original_build is not None:
            tasks_mod._build = original_build
        changed.restore()
