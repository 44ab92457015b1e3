"""The example plugin's own tests: ctbench's conformance kit, one pytest test per check.

Run them against the installed package (see the README):

    pip install ./examples/ctbench-example-method
    pytest examples/ctbench-example-method/tests
"""

from __future__ import annotations

import numpy as np

from ctbench.method import SourceData, Standards
from ctbench.testing import check_names, parametrize_with_checks
from ctbench_example_method import MeanOffset

# Every check of the kit (API, the protocol probe, numerical checks on the synthetic task); the
# checks of one method share its fits. To select checks or mark some as expected to fail:
#   @parametrize_with_checks([MeanOffset], select=["fit_returns_self", ...],
#                            xfail={"deterministic": "why it cannot be"})


@parametrize_with_checks([MeanOffset])
def test_ctbench_conformance(method, check):
    check(method)


def test_every_check_is_collected():
    """The decorator makes one test per check of the installed ctbench."""
    mark = parametrize_with_checks([MeanOffset])
    assert [case.id for case in mark.args[1]] == [f"mean_offset-{name}" for name in check_names()]


def test_offset_is_the_mean_difference():
    """A method-specific test next to the kit: a constant shift between instruments is undone."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 30)).cumsum(axis=1)
    y = (X[:, 10:20].mean(axis=1) + 0.01 * rng.normal(size=40))[:, None]
    axis = np.arange(30.0)
    m = MeanOffset(max_components=5, cv=5).fit(SourceData(X=X, y=y, axis=axis, axis_unit="nm", properties=("p",)))
    shift = np.linspace(0.5, 1.5, 30)
    m.transfer(Standards(X_source=X[:5], X_target=X[:5] + shift, y=y[:5], axis=axis, axis_unit="nm", properties=("p",)))
    np.testing.assert_allclose(m.transform_target(X[5:] + shift), X[5:], atol=1e-12)
