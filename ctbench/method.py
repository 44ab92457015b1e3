"""The method contract every calibration-transfer method implements (DESIGN section 4).

A method is a scikit-learn shaped class: ``__init__`` only stores its parameters, ``fit``
sees the source calibration, ``transfer`` sees the N paired transfer standards (and, for
methods tagged transductive, the unlabelled test spectra), ``predict`` maps target spectra
to property values. The runner owns seeding, timing, validation and metrics.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np


@dataclass(frozen=True)
class Tags:
    """What a method declares about itself; the runner enforces it."""

    min_shots: int = 1
    """Fewest transfer standards the method accepts (0 means it can run zero-shot)."""
    max_shots: int | None = None
    zero_shot: bool = False
    """True when ``transfer`` accepts N = 0 standards."""
    transductive: bool = False
    """True when the method is given the unlabelled test spectra; such runs are marked."""
    multi_target: bool = True
    corrects_spectra: bool = False
    """True when the method implements ``transform_target`` (target -> source-like spectra)."""
    uses_target_calibration: bool = False
    """Reference rows only: the method is calibrated on the *target* spectra of the whole pool
    (``full_recalibration``). Records of such methods are marked ``reference``."""
    reference: bool = False
    """A reference row (no_transfer, target_only, full_recalibration)."""
    iterative: bool = False
    """Reports intermediate values to a tuning trial (pruners can stop it early)."""
    native_axes: bool = False
    """Accepts each instrument's own axis: on a task whose card says ``alignment: native`` the
    method gets source spectra on the source axis and target spectra on the target axis
    (``Standards.axis_target``; ``predict`` gets target spectra on it) instead of both on the
    overlap grid."""

    def __post_init__(self) -> None:
        if self.zero_shot and self.min_shots != 0:
            object.__setattr__(self, "min_shots", 0)


@dataclass(frozen=True)
class SourceData:
    """The source calibration a method may learn from: spectra ``X`` (n, p) and values ``y`` (n, k)."""

    X: np.ndarray
    y: np.ndarray
    axis: np.ndarray
    axis_unit: str
    properties: tuple[str, ...]
    instrument: str = ""
    groups: np.ndarray | None = None
    """Sample id per row: rows with the same id are replicates of one physical sample."""


@dataclass(frozen=True)
class Standards:
    """N paired transfer standards: each row measured on both instruments, with its values."""

    X_source: np.ndarray
    X_target: np.ndarray
    y: np.ndarray
    axis: np.ndarray
    axis_unit: str
    properties: tuple[str, ...]
    groups: np.ndarray | None = None
    axis_target: np.ndarray | None = None
    """The target spectra's axis when it differs from ``axis`` (methods tagged ``native_axes``
    on a card with ``alignment: native``); None: both are on ``axis``."""

    @property
    def n(self) -> int:
        return int(self.X_target.shape[0])


class TransferMethod:
    """Base class of a calibration-transfer method.

    Subclasses set ``name``, ``version`` and ``tags``, list their hyper-parameters as keyword
    arguments of ``__init__`` (stored unchanged under the same attribute names, one of them
    ``random_state``), and implement ``fit``, ``transfer`` and ``predict``.
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    tags: ClassVar[Tags] = Tags()
    description: ClassVar[str] = ""

    # --- parameters (scikit-learn conventions, without importing scikit-learn) ---
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        names = []
        for p in sig.parameters.values():
            if p.name == "self":
                continue
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise TypeError(f"{cls.__name__}.__init__ must not take *args or **kwargs")
            names.append(p.name)
        return sorted(names)

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        sig = inspect.signature(cls.__init__)
        return {
            p.name: p.default
            for p in sig.parameters.values()
            if p.name != "self" and p.default is not inspect.Parameter.empty
        }

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._param_names()}

    def set_params(self, **params: Any) -> TransferMethod:
        valid = set(self._param_names())
        for k, v in params.items():
            if k not in valid:
                raise ValueError(
                    f"{self.name or type(self).__name__} has no parameter {k!r}; "
                    f"valid: {', '.join(sorted(valid)) or '(none)'}"
                )
            setattr(self, k, v)
        return self

    def clone(self) -> TransferMethod:
        """A new, unfitted method with the same parameters."""
        return type(self)(**copy.deepcopy(self.get_params()))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # --- the contract ---
    def fit(self, source: SourceData) -> TransferMethod:
        """Learn from the source calibration. Returns self."""
        raise NotImplementedError

    def transfer(self, standards: Standards, unlabelled: np.ndarray | None = None) -> TransferMethod:
        """Adapt to the target instrument with the paired standards. Returns self."""
        raise NotImplementedError

    def predict(self, X_target: np.ndarray) -> np.ndarray:
        """Predict property values (n, k) for target-instrument spectra (n, p)."""
        raise NotImplementedError

    def transform_target(self, X_target: np.ndarray) -> np.ndarray:
        """Map target spectra into the source instrument's space (methods tagged corrects_spectra)."""
        raise NotImplementedError(f"{self.name} does not correct spectra")

    def chosen_params(self) -> dict[str, Any]:
        """The hyper-parameters this fitted/transferred method chose from data (JSON-serialisable:
        components per property, l, window, rank, penalty, ...); the runner stores them in the
        record under 'chosen'."""
        return {}

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        """Suggest hyper-parameters from an Optuna trial; override to make the method tunable."""
        raise NotImplementedError(f"method {cls.name!r} defines no search_space(trial)")

    @classmethod
    def has_search_space(cls) -> bool:
        return cls.search_space.__func__ is not TransferMethod.search_space.__func__  # type: ignore[attr-defined]

    @classmethod
    def pretrain(cls, corpus: Any, config: dict[str, Any]) -> Any:
        """Optional: self-supervised pretraining (foundation models)."""
        raise NotImplementedError(f"method {cls.name!r} does not pretrain")

    @classmethod
    def has_pretrain(cls) -> bool:
        return cls.pretrain.__func__ is not TransferMethod.pretrain.__func__  # type: ignore[attr-defined]

    # Iterative methods call this after each epoch; tuning installs a callback that
    # forwards to ``trial.report`` and raises optuna's TrialPruned when asked to.
    _report_callback: Any = None

    def report_intermediate(self, value: float, step: int) -> None:
        cb = getattr(self, "_report_callback", None)
        if cb is not None:
            cb(float(value), int(step))


@dataclass
class MethodInfo:
    """A registered method class and where it came from."""

    cls: type[TransferMethod]
    plugin: str
    """Registration name of the plugin (its entry-point name, or ``name@distribution`` when a
    second distribution reused an entry-point name)."""
    extra: dict[str, Any] = field(default_factory=dict)
    qualified: str = ""
    """``plugin:method`` (always accepted by ``ctbench.plugins.get_method``); unique per class."""
    distribution: str = ""
    """Name of the distribution that ships the plugin (``ctbench`` for the built-ins)."""
    distribution_version: str = ""
    builtin: bool = False
    """True when the distribution is ctbench itself (built-ins keep a plain name on a clash)."""
    listed_name: str = ""
    """The name ``ctbench methods`` lists and resolves unambiguously: the plain ``cls.name`` when this
    class owns it, else ``qualified`` (the name is shadowed by a built-in or claimed by two plugins).
    Records and leaderboard rows should be keyed by it (or by ``qualified``), never by ``cls.name``."""

    @property
    def name(self) -> str:
        return self.cls.name
