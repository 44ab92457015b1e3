"""A record's identity cannot go stale (issue 12): it holds the card's content hash and the
method code's hash, so an edited card or edited method code makes new records even when nobody
bumped a version, and the leaderboard never pools records of different code under one name."""

from __future__ import annotations

import copy
import importlib
import sys
from pathlib import Path

import pytest

from ctbench import codehash
from ctbench.cli.main import app
from ctbench.leaderboard import LeaderboardError, build_leaderboard
from ctbench.store import Store, record_key
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str):
    res = CliRunner().invoke(app, ["run", *args, "--no-mlflow"])
    assert res.exit_code == 0, res.output
    return res.output


def test_an_edited_card_makes_new_records(tmp_path):
    from ctbench.cards import load_card

    src = Path(load_card("synthetic_a_b").path).read_text()
    card = tmp_path / "synthetic_a_b.yaml"
    card.write_text(src)
    res = tmp_path / "res"
    out = _run("-m", "sbc", "-t", str(card), "--shots", "5", "--reps", "2", "--results-dir", str(res))
    assert "2 to do" in out
    assert "2 already in" in _run("-m", "sbc", "-t", str(card), "--shots", "5", "--reps", "2", "--results-dir", str(res))
    card.write_text(src + "\n# edited: same version, different content\n")
    out = _run("-m", "sbc", "-t", str(card), "--shots", "5", "--reps", "2", "--results-dir", str(res))
    assert "0 already in" in out and "2 to do" in out
    recs = list(Store(res).iter_records())
    assert len({r["identity"]["card_sha256"] for r in recs}) == 2
    # the leaderboard refuses to mix them, saying why
    with pytest.raises(LeaderboardError, match="different card contents"):
        build_leaderboard(recs)


def test_edited_method_code_changes_the_code_hash(tmp_path, monkeypatch):
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .method import Mine\n")
    (pkg / "method.py").write_text(
        "from ctbench.method import TransferMethod\n\nclass Mine(TransferMethod):\n    name = 'mine'\n    FACTOR = 1.0\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = importlib.import_module("mypkg")
    h1 = codehash.method_code_hash(mod.Mine)
    assert len(h1) == 16
    (pkg / "method.py").write_text(
        "from ctbench.method import TransferMethod\n\nclass Mine(TransferMethod):\n    name = 'mine'\n    FACTOR = 2.0\n"
    )
    codehash._hash_of.cache_clear()
    assert codehash.method_code_hash(mod.Mine) != h1
    sys.modules.pop("mypkg", None)
    sys.modules.pop("mypkg.method", None)


def test_the_code_hash_covers_the_ctbench_modules_a_plugin_imports():
    from ctbench_classical.pds import PDS

    files = codehash.files_of(PDS)
    labels = {codehash._label(f) for f in files}
    assert {"ctbench_classical/pds.py", "ctbench_classical/_common.py", "ctbench/pls.py", "ctbench/method.py"} <= labels
    assert "ctbench/cli/run.py" not in labels  # the CLI is not method code


def test_records_of_different_code_are_never_pooled(tmp_path):
    res = tmp_path / "res"
    _run("-m", "full_recalibration,sbc", "-t", "synthetic_a_b", "--shots", "5", "--reps", "2", "--results-dir", str(res))
    store = Store(res)
    recs = list(store.iter_records())
    for r in [r for r in recs if r["identity"]["method"] == "sbc"]:
        old = copy.deepcopy(r)
        old.pop("_path")
        old["identity"]["code_sha256"] = "0123456789abcdef"
        old["key"] = record_key(old["identity"])
        store.write(old)
    recs = list(store.iter_records())
    rows = build_leaderboard(recs)
    labels = {r["method"] for r in rows if r["method"].startswith("sbc")}
    assert len(labels) == 2 and any("<code 01234567>" in lab for lab in labels), labels
    out = CliRunner().invoke(app, ["leaderboard", "--include-synthetic", "--results-dir", str(res), "-f", "md"])
    assert out.exit_code == 0 and "different code versions" in out.output
