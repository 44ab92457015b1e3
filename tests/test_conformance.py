"""The conformance kit (ctbench.testing, `ctbench check`): every registered method passes it,
and deliberately broken methods fail exactly the checks that describe what is wrong."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from ctbench.method import MethodInfo, SourceData, Standards, Tags, TransferMethod
from ctbench.pls import PLSCalibration
from ctbench.plugins import load_methods
from ctbench.testing import (
    CheckReport,
    ConformanceError,
    assert_conforms,
    check_method,
    check_names,
)

# --- every registered method passes the kit ----------------------------------------------

# Torch-based methods take 20-60 s per fit with their defaults: the default suite checks them
# in quick mode with few epochs (parameters filtered to those the class has), and the full
# kit with default parameters runs in the slow suite.
HEAVY = {"cnn", "lora_ct", "spektron-lora", "spektron-ttt", "spektron-lora-nopretrain", "spektron-fullft", "spektron-pds"}
# (the Spektron methods' quick check runs in tests/test_spektron_method.py with a tiny checkpoint)
_SPEKTRON_FAST = {"transfer_steps": 10, "ttt_steps": 5, "mc_samples": 4, "finetune_steps": 10, "conformal_folds": 2}
FAST_PARAMS = {
    "cnn": {"epochs": 10, "patience": 5, "transfer_max_epochs": 10, "transfer_epochs": 5, "batch_size": 32},
    "lora_ct": {"epochs": 10, "patience": 5, "transfer_epochs": 10, "batch_size": 32},
    # the Spektron variants share spektron's code (its full kit runs in the slow suite); their
    # own conformance runs in quick mode with short schedules to keep CI well inside its budget
    "spektron-ttt": _SPEKTRON_FAST,
    "spektron-lora-nopretrain": _SPEKTRON_FAST,
    "spektron-fullft": _SPEKTRON_FAST,
    "spektron-pds": _SPEKTRON_FAST,
}
QUICK_ONLY = {"spektron-ttt", "spektron-lora-nopretrain", "spektron-fullft", "spektron-pds"}


def _method_cases() -> list:
    cases = []
    for name in load_methods():
        if name not in HEAVY:
            cases.append(pytest.param(name, False, id=name))
            continue
        if name in FAST_PARAMS:
            cases.append(pytest.param(name, True, id=f"{name}-quick"))
        if name not in QUICK_ONLY:
            cases.append(pytest.param(name, False, id=f"{name}-full", marks=pytest.mark.slow))
    return cases


def test_reference_methods_are_registered() -> None:
    assert {"no_transfer", "target_only", "full_recalibration"} <= set(load_methods())


@pytest.mark.parametrize(("name", "quick"), _method_cases())
def test_registered_method_conforms(name: str, quick: bool, request: pytest.FixtureRequest) -> None:
    if name in HEAVY:
        request.getfixturevalue("one_torch_thread")
    cls = load_methods()[name].cls
    params = {k: v for k, v in FAST_PARAMS.get(name, {}).items() if k in cls._param_names()} if quick else None
    # default-parameter networks (slow suite) fit for minutes on a shared CPU: no per-check budget there
    report = assert_conforms(name, quick=quick, params=params, timeout=None if name in HEAVY and not quick else 120)
    assert report["declares_contract"].status == "passed"
    assert report["finite_predictions"].status == "passed"
    if cls.tags.reference:
        assert report["reference_property"].status == "passed"
    else:
        assert report["beats_calibration_mean"].status == "passed"
        assert "vs no_transfer x" in report["beats_calibration_mean"].detail


# --- a small correct method, and broken variants of it -----------------------------------


class OffsetPLS(TransferMethod):
    """Source PLS (fixed latent variables: fast) on target spectra shifted by the standards' mean offset."""

    name = "test_offset_pls"
    version = "1"
    tags = Tags(min_shots=1)

    def __init__(self, n_components: int = 6, random_state: int = 0):
        self.n_components = n_components
        self.random_state = random_state

    def fit(self, source: SourceData) -> OffsetPLS:
        self.model_ = PLSCalibration(n_components=self.n_components).fit(source.X, source.y)
        return self

    def transfer(self, standards: Standards, unlabelled: np.ndarray | None = None) -> OffsetPLS:
        self.offset_ = standards.X_source.mean(axis=0) - standards.X_target.mean(axis=0)
        return self

    def predict(self, X_target: np.ndarray) -> np.ndarray:
        return self.model_.predict(X_target + self.offset_)

    @classmethod
    def search_space(cls, trial) -> dict:
        return {"n_components": trial.suggest_int("n_components", 2, 10)}


class MutatesInputs(OffsetPLS):
    """Centres the standards' target spectra in place when it can (the runner's read-only arrays hide it)."""

    name = "test_mutates_inputs"

    def transfer(self, standards, unlabelled=None):
        super().transfer(standards, unlabelled)
        X = standards.X_target
        if X.flags.writeable:
            X -= X.mean(axis=0)
        return self


class WrongShape(OffsetPLS):
    """Returns one column for two properties."""

    name = "test_wrong_shape"

    def predict(self, X_target):
        return super().predict(X_target)[:, 0]


class InitDoesWork(OffsetPLS):
    """Builds its model and a cache in __init__."""

    name = "test_init_does_work"

    def __init__(self, n_components: int = 6, random_state: int = 0):
        self.n_components = n_components
        self.random_state = random_state
        self.model_ = PLSCalibration(n_components=n_components)
        self.cache = {}


class ConvertsParams(OffsetPLS):
    """Changes a parameter's value in __init__ (so get_params / clone do not round-trip)."""

    name = "test_converts_params"

    def __init__(self, n_components: int = 6, random_state: int = 0):
        self.n_components = n_components + 0.5
        self.random_state = random_state

    def fit(self, source):
        self.model_ = PLSCalibration(n_components=int(self.n_components)).fit(source.X, source.y)
        return self


class FitReturnsNone(OffsetPLS):
    name = "test_fit_returns_none"

    def fit(self, source):
        super().fit(source)


class NotDeterministic(OffsetPLS):
    """Adds unseeded noise to the offset."""

    name = "test_not_deterministic"

    def transfer(self, standards, unlabelled=None):
        super().transfer(standards, unlabelled)
        self.offset_ = self.offset_ + np.random.default_rng().normal(scale=1e-3, size=self.offset_.shape)
        return self


class SharedState(OffsetPLS):
    """Keeps its offset in a class-level dict: deep copies of the fitted method share it."""

    name = "test_shared_state"
    _offsets: dict = {}

    def transfer(self, standards, unlabelled=None):
        self._offsets["last"] = standards.X_source.mean(axis=0) - standards.X_target.mean(axis=0)
        return self

    def predict(self, X_target):
        return self.model_.predict(X_target + self._offsets["last"])


class Unpicklable(OffsetPLS):
    name = "test_unpicklable"

    def transfer(self, standards, unlabelled=None):
        super().transfer(standards, unlabelled)
        self.correct_ = lambda X: X + self.offset_
        return self


class BadSearchSpace(OffsetPLS):
    name = "test_bad_search_space"

    @classmethod
    def search_space(cls, trial) -> dict:
        return {"n_components": trial.suggest_int("n_components", 2, 10), "alpha": trial.suggest_float("alpha", 0, 1)}


class BadTags(OffsetPLS):
    """Claims zero-shot and spectral correction, supports neither."""

    name = "test_bad_tags"
    tags = Tags(zero_shot=True, corrects_spectra=True)

    def transfer(self, standards, unlabelled=None):
        if standards.n == 0:
            raise ValueError("no standards")
        return super().transfer(standards, unlabelled)


class Useless(OffsetPLS):
    """Predicts zero for everything."""

    name = "test_useless"

    def predict(self, X_target):
        return np.zeros((len(X_target), 2))


class ZeroShotOffset(OffsetPLS):
    """Zero-shot capable: no standards, no offset."""

    name = "test_zero_shot_offset"
    tags = Tags(zero_shot=True)

    def transfer(self, standards, unlabelled=None):
        if standards.n == 0:
            self.offset_ = np.zeros(standards.X_target.shape[1])
            return self
        return super().transfer(standards, unlabelled)


class TransductiveOffset(OffsetPLS):
    """Transductive: the offset of the unlabelled target spectra's mean to the standards' source mean."""

    name = "test_transductive_offset"
    tags = Tags(min_shots=1, transductive=True)

    def transfer(self, standards, unlabelled=None):
        if unlabelled is None:
            raise ValueError("a transductive method needs the unlabelled target spectra")
        super().transfer(standards, unlabelled)
        self.offset_ = 0.5 * self.offset_ + 0.5 * (standards.X_target.mean(axis=0) - unlabelled.mean(axis=0) + self.offset_)
        return self


class IterativeOffset(OffsetPLS):
    """Reports a (dummy) loss per 'epoch' of its fit."""

    name = "test_iterative_offset"
    tags = Tags(min_shots=1, iterative=True)

    def fit(self, source):
        for epoch in range(3):
            self.report_intermediate(1.0 / (epoch + 1), epoch)
        return super().fit(source)


class SilentIterative(OffsetPLS):
    name = "test_silent_iterative"
    tags = Tags(min_shots=1, iterative=True)


class NaNPredictions(OffsetPLS):
    name = "test_nan_predictions"

    def predict(self, X_target):
        pred = super().predict(X_target)
        pred[0, 1] = np.nan
        return pred


@pytest.mark.parametrize(
    ("cls", "check"),
    [(ZeroShotOffset, "zero_shot"), (TransductiveOffset, "transductive"), (IterativeOffset, "reports_intermediate")],
)
def test_tagged_variants_conform(cls: type, check: str) -> None:
    report = assert_conforms(cls)
    assert report[check].status == "passed", report[check].detail


def test_a_correct_method_conforms() -> None:
    report = assert_conforms(OffsetPLS)
    assert isinstance(report, CheckReport) and report.ok
    assert [r.name for r in report.results] == check_names()
    assert not report.failed and len(report.passed) >= 15
    skipped = {r.name for r in report.skipped}
    assert skipped == {"zero_shot", "transductive", "reports_intermediate", "transform_target", "reference_property"}
    assert all(r.detail for r in report.skipped)
    text = str(report)
    assert text.splitlines()[-1] == f"{len(report.passed)} passed, 0 failed, {len(report.skipped)} skipped"
    assert "PASS  beats_calibration_mean" in text and "vs no_transfer x" in text
    assert report.to_dict()["ok"] is True


BROKEN = [
    (MutatesInputs, {"inputs_not_mutated": "transfer modified standards.X_target"}),
    (WrongShape, {"predict_shape": "expected (24, 2)"}),
    (InitDoesWork, {"init_stores_params": "fitted attribute(s) model_", "clone_unfitted": "carries fitted attribute(s) model_"}),
    (ConvertsParams, {"init_stores_params": "changes parameter value(s) n_components",
                      "get_params_roundtrip": "differs in n_components", "clone_unfitted": "n_components"}),
    (FitReturnsNone, {"fit_returns_self": "not self"}),
    (NotDeterministic, {"deterministic": "predict differently", "deepcopy_isolation": "not deterministic"}),
    (SharedState, {"deepcopy_isolation": "share state"}),
    (Unpicklable, {"pickle_roundtrip": "pickling"}),
    (BadSearchSpace, {"search_space": "unknown parameter(s) alpha"}),
    (BadTags, {"tags_consistent": "transform_target", "zero_shot": "0 standards"}),
    (Useless, {"beats_calibration_mean": "calibration mean", "multi_target": "fails on a task with one property"}),
    (SilentIterative, {"reports_intermediate": "never called report_intermediate"}),
    (NaNPredictions, {"finite_predictions": "1 of 48 predictions are NaN or inf", "multi_target": "one property"}),
]


@pytest.mark.parametrize(("cls", "expected"), BROKEN, ids=[c.__name__ for c, _ in BROKEN])
def test_a_broken_method_fails_the_right_checks(cls: type, expected: dict[str, str]) -> None:
    report = check_method(cls)
    assert not report.ok
    failed = {r.name: r.detail for r in report.failed}
    assert set(failed) == set(expected), str(report)
    for name, words in expected.items():
        assert words in failed[name], failed[name]
        assert "\n" not in failed[name]
    with pytest.raises(ConformanceError, match="does not conform"):
        assert_conforms(cls)


def test_init_does_work_names_what_it_set() -> None:
    detail = check_method(InitDoesWork, checks=["init_stores_params"])["init_stores_params"].detail
    assert "fitted attribute(s) model_" in detail and "not parameters: cache" in detail


def test_zero_checks_is_a_failure() -> None:
    none = check_method(OffsetPLS, checks=[])
    assert none.results == [] and not none.ok and "no checks ran" in none.summary()
    only_skipped = check_method(OffsetPLS, checks=["zero_shot", "transductive"])
    assert len(only_skipped.skipped) == 2 and only_skipped.n_run == 0 and not only_skipped.ok
    with pytest.raises(ConformanceError):
        # a non-method class: every check but the first is skipped, the first fails
        assert_conforms(type("NotAMethod", (), {}))
    with pytest.raises(ValueError, match="did you mean 'pickle_roundtrip'"):
        check_method(OffsetPLS, checks=["pickle_rountrip"])


def test_kit_params_and_quick_mode() -> None:
    report = check_method(OffsetPLS, quick=True, params={"n_components": 3})
    assert report.ok
    assert report["deterministic"].status == "skipped" and "quick" in report["deterministic"].detail
    assert "quick mode" in report["search_space"].detail
    assert report["inputs_not_mutated"].status == "passed"
    assert check_method(MutatesInputs, quick=True)["inputs_not_mutated"].status == "failed"


def test_check_by_registered_name_and_unknown_name() -> None:
    from ctbench.plugins import UnknownName

    assert check_method("target_only", checks=["declares_contract"]).ok
    with pytest.raises(UnknownName, match="did you mean 'no_transfer'"):
        check_method("no_transfr")


# --- `ctbench check` ---------------------------------------------------------------------


@pytest.fixture
def cli():
    from ctbench.cli.main import app

    runner = CliRunner()
    return lambda *args: runner.invoke(app, list(args))


def test_cli_check_passes(cli) -> None:
    res = cli("check", "no_transfer", "--quick")
    assert res.exit_code == 0, res.output
    assert "reference_property" in res.output and "0 failed" in res.output


def test_cli_check_json(cli) -> None:
    res = cli("check", "target_only", "--quick", "--format", "json", "--only", "declares_contract,predict_shape")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["ok"] and data["counts"] == {"passed": 2, "failed": 0, "skipped": 0}


def test_cli_check_failure_exits_non_zero(cli, monkeypatch: pytest.MonkeyPatch) -> None:
    import ctbench.plugins

    monkeypatch.setattr(ctbench.plugins, "get_method", lambda name: MethodInfo(cls=WrongShape, plugin="tests"))
    res = cli("check", "test_wrong_shape", "--quick")
    assert res.exit_code == 1
    assert "predict_shape" in res.output and "1 failed" in res.output


def test_cli_check_zero_checks_exits_non_zero(cli) -> None:
    res = cli("check", "no_transfer", "--only", "zero_shot")  # no_transfer is zero-shot: runs
    assert res.exit_code == 0, res.output
    res = cli("check", "no_transfer", "--only", "transductive")  # skipped: nothing ran
    assert res.exit_code == 1 and "no checks ran" in res.output


def test_cli_check_unknown_names(cli) -> None:
    res = cli("check", "no_transfr")
    assert res.exit_code == 2
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "did you mean 'no_transfer'" in lines[0]
    res = cli("check", "no_transfer", "--param", "max_component=3")
    assert res.exit_code == 2 and "did you mean 'max_components'" in res.output
    res = cli("check", "no_transfer", "--only", "determinism")
    assert res.exit_code == 2 and "unknown check 'determinism'" in res.output
