"""Faults and bad input in the result store: corrupt or malformed record files, names that
would leave ``runs/``, a full or read-only disk.

Every malformed record is skipped with one warning naming its file (leaderboard, report) or
done again and overwritten (run); nothing ends in a traceback."""

from __future__ import annotations

import contextlib
import copy
import errno
import hashlib
import json
import math
import os
import shutil
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ctbench.cli.main import app
from ctbench.leaderboard import build_leaderboard, consistent_records
from ctbench.store import RecordWarning, Store, StoreError, record_problem, run_identity

runner = CliRunner()
METHODS = "no_transfer,target_only,full_recalibration"
GRID = ("-m", METHODS, "-t", "synthetic_a_b", "--shots", "5,10", "--reps", "3", "--no-mlflow")


def invoke(*args: str):
    res = runner.invoke(app, list(args))
    out = res.output
    assert "Traceback" not in out, out
    assert res.exception is None or isinstance(res.exception, SystemExit), (res.exception, out)
    return res, out


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A small real store: the reference methods on the synthetic task, N = 5, 10, 3 reps (18 records)."""
    results = tmp_path_factory.mktemp("corrupt_store")
    res = runner.invoke(app, ["run", *GRID, "--results-dir", str(results)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return results


def files(results: Path, method: str) -> list[Path]:
    return sorted((results / "runs" / "synthetic_a_b" / method).glob("*.json"))


def edit(path: Path, fn) -> None:
    rec = json.loads(path.read_text())
    rec = fn(rec)
    path.write_text(json.dumps(rec))


def put(*keys_and_value):
    *keys, value = keys_and_value

    def fn(rec):
        d = rec
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
        return rec

    return fn


def drop(*keys):
    def fn(rec):
        d = rec
        for k in keys[:-1]:
            d = d[k]
        del d[keys[-1]]
        return rec

    return fn


def cut_rows(k: int):
    def fn(rec):
        rec["residuals"]["values"] = rec["residuals"]["values"][:-k]
        rec["residuals"]["sample"] = rec["residuals"]["sample"][:-k]
        return rec

    return fn


def call(f):
    def fn(rec):
        f(rec)
        return rec

    return fn


# (variant, method whose first record is corrupted, bytes or an edit of the parsed record,
#  a word the warning must hold)
VARIANTS = [
    ("binary", "target_only", b"\xff\xfe\x00\x81garbage\x9c", "not a text file"),
    ("not_json", "target_only", b"{not json", "not valid JSON"),
    ("empty", "target_only", b"", "not valid JSON"),
    ("array", "target_only", b"[1,2]", "an array"),
    ("null", "target_only", b"null", "null"),
    ("string", "target_only", b'"x"', "a string"),
    ("deeply_nested", "target_only", b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ("identity_string", "target_only", put("identity", "x"), "identity is a string"),
    ("identity_missing", "target_only", drop("identity"), "no identity"),
    ("task_missing", "target_only", drop("identity", "task"), "identity.task"),
    ("n_shots_string", "target_only", put("identity", "n_shots", "5"), "identity.n_shots"),
    ("rep_bool", "target_only", put("identity", "rep", True), "identity.rep"),
    ("version_list", "target_only", put("identity", "task_version", ["2"]), "identity.task_version"),
    ("params_null", "target_only", put("identity", "params", None), "identity.params"),
    ("status_3", "target_only", put("status", 3), "status"),
    ("status_missing", "target_only", drop("status"), "status"),
    ("method_missing", "target_only", drop("method"), "no method"),
    ("method_name_int", "target_only", put("method", "name", 1), "method.name"),
    ("user_params_list", "target_only", put("method", "user_params", [1]), "method.user_params"),
    ("tags_string", "target_only", put("method", "tags", "x"), "method.tags"),
    ("task_null", "target_only", put("task", None), "task is null"),
    ("task_properties_int", "target_only", put("task", "properties", 5), "task.properties"),
    ("split_string", "target_only", put("split", "x"), "split"),
    ("split_hash_missing", "target_only", drop("split", "test_rows_hash"), "test_rows_hash"),
    ("metrics_null", "target_only", put("metrics", None), "metrics"),
    ("per_property_missing", "target_only", drop("metrics", "per_property"), "per_property"),
    ("per_property_value_list", "target_only", put("metrics", "per_property", "analyte_a", [1]), "analyte_a"),
    ("rmsep_string", "full_recalibration", put("metrics", "per_property", "analyte_a", "rmsep", "1.0"), "rmsep"),
    ("rmsep_bool", "target_only", put("metrics", "per_property", "analyte_a", "rmsep", True), "rmsep"),
    ("rmsep_null", "full_recalibration", put("metrics", "per_property", "analyte_b", "rmsep", None), "rmsep"),
    ("r2_missing", "target_only", drop("metrics", "per_property", "analyte_b", "r2"), "r2"),
    ("mean_missing", "target_only", drop("metrics", "mean"), "metrics.mean"),
    ("mean_sep_string", "target_only", put("metrics", "mean", "sep", "x"), "metrics.mean.sep"),
    ("residuals_list", "target_only", put("residuals", [1, 2]), "residuals"),
    ("residuals_short_values", "target_only", call(lambda r: r["residuals"]["values"].pop()), "residuals.sample"),
    ("residuals_ragged", "target_only", call(lambda r: r["residuals"]["values"][0].append(1.0)), "different lengths"),
    ("residuals_string_value", "target_only", put("residuals", "values", 0, 0, "1"), "residuals.values"),
    ("residuals_bool_value", "target_only", put("residuals", "values", 0, 0, False), "residuals.values"),
    ("residuals_sample_negative", "target_only", put("residuals", "sample", 0, -1), "residuals.sample"),
    ("residuals_unknown_names", "target_only", put("residuals", "properties", ["x", "y"]), "no column"),
    ("residuals_one_column", "full_recalibration", put("residuals", "properties", ["analyte_a"]), "column"),
    ("error_not_object", "target_only", call(lambda r: r.update(status="failed", metrics=None, error="boom")), "error"),
    ("error_message_int", "target_only",
     call(lambda r: r.update(status="failed", metrics=None, error={"type": "E", "message": 5})), "error.message"),
    ("timings_string", "target_only", put("timings", "fit_s", "slow"), "timings"),
    ("outer_index_list", "target_only", put("outer", "index", [0]), "outer"),
    # valid on their own, but not with the others: left out by the leaderboard and the report
    ("properties_differ", "target_only", call(lambda r: r["metrics"]["per_property"].pop("analyte_b")), "properties"),
    ("residual_rows_differ", "target_only", cut_rows(2), "residuals"),
    ("reference_residual_rows_differ", "full_recalibration", cut_rows(1), "residuals"),
]
IDS = [v[0] for v in VARIANTS]

CROSS_RECORD = {"properties_differ", "residual_rows_differ", "reference_residual_rows_differ"}


@contextlib.contextmanager
def _no_warning():
    """The block must not raise a RecordWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecordWarning)
        yield


def plant(results: Path, method: str, corruption, index: int = 0) -> Path:
    path = files(results, method)[index]
    if isinstance(corruption, bytes):
        path.write_bytes(corruption)
    else:
        edit(path, corruption)
    return path


def rows_of(out: str) -> list[dict]:
    start = out.index("[")
    return json.loads(out[start:])


def same_rows(a: list[dict], b: list[dict]) -> bool:
    def norm(v):
        return None if isinstance(v, float) and math.isnan(v) else v

    return [{k: norm(v) for k, v in r.items()} for r in a] == [{k: norm(v) for k, v in r.items()} for r in b]


@pytest.mark.parametrize("name,method,corruption,why", VARIANTS, ids=IDS)
def test_leaderboard_skips_a_corrupt_record_as_if_absent(store, tmp_path, name, method, corruption, why):
    results = shutil.copytree(store, tmp_path / "store")
    path = plant(results, method, corruption)
    res, out = invoke("leaderboard", "--include-synthetic", "--results-dir", str(results), "-f", "json", "--per-property")
    assert res.exit_code == 0, out
    warning = [line for line in res.stderr.splitlines() if str(path) in line]
    assert len(warning) == 1 and warning[0].startswith("warning: skipping") and why in warning[0], res.stderr
    # skipped exactly as if the file were not there
    path.unlink()
    clean, _ = invoke("leaderboard", "--include-synthetic", "--results-dir", str(results), "-f", "json", "--per-property")
    assert same_rows(rows_of(res.stdout), rows_of(clean.stdout))


@pytest.mark.parametrize("name,method,corruption,why", VARIANTS, ids=IDS)
def test_store_get_and_iter_records_refuse_a_corrupt_record(store, tmp_path, name, method, corruption, why):
    results = shutil.copytree(store, tmp_path / "store")
    path = plant(results, method, corruption)
    st = Store(results)
    with pytest.warns(RecordWarning) if name not in CROSS_RECORD else _no_warning():
        recs = list(st.iter_records())
    if name in CROSS_RECORD:  # valid alone: the leaderboard leaves it out
        assert record_problem(json.loads(path.read_text())) is None
        kept, notes = consistent_records(recs)
        assert len(kept) == len(recs) - 1 and len(notes) == 1 and str(path) in notes[0]
        return
    assert str(path) not in {r["_path"] for r in recs} and len(recs) == 17
    ident = json.loads(files(store, method)[0].read_text())["identity"]
    with pytest.warns(RecordWarning, match="its run is done again") as caught:
        assert st.get(ident) is None and not st.is_done(ident)
    assert len(caught) == 1 and str(path) in str(caught[0].message)  # once per file
    assert why in st.rejected[path]


ALL_AT_ONCE = ["binary", "array", "null", "deeply_nested", "identity_string", "n_shots_string", "status_3",
               "method_missing", "task_null", "per_property_missing", "rmsep_string", "rmsep_bool",
               "residuals_ragged", "error_message_int"]


def test_report_and_run_with_many_corruptions_at_once(store, tmp_path):
    """Many variants in one store (one file each, most records corrupt): the report is made with
    a note per file, and `ctbench run` over the same grid does those runs again, leaving valid
    records (written atomically: no temporary file left)."""
    results = shutil.copytree(store, tmp_path / "store")
    variants = {v[0]: v for v in VARIANTS}
    planted = []
    for i, name in enumerate(ALL_AT_ONCE):
        method = METHODS.split(",")[i % 3]
        planted.append(plant(results, method, variants[name][2], i // 3))
    # one record valid alone but not with the others (the report leaves it out too): a
    # full_recalibration record whose outer split keeps other intact records (file names are
    # hashes, so which records the corruptions above hit depends on the code's hash)
    def split_of(path: Path) -> str:
        return json.loads(path.read_text())["split"]["test_rows_hash"]

    intact = [p for m in METHODS.split(",") for p in files(results, m) if p not in planted]
    odd = next(p for p in files(results, "full_recalibration") if p not in planted
               and any(q != p and split_of(q) == split_of(p) for q in intact))
    edit(odd, cut_rows(2))
    out_dir = tmp_path / "rep"
    res, out = invoke("report", "--include-synthetic", "--results-dir", str(results), "--out", str(out_dir), "--no-spectra")
    assert res.exit_code == 0, out
    for path in planted:
        assert f"note: skipping corrupt record {path}:" in res.stderr, path
    assert f"note: skipping record {odd}: its residuals" in res.stderr
    assert (out_dir / "summary.md").exists()
    res, out = invoke("leaderboard", "--include-synthetic", "--results-dir", str(results), "-f", "md")
    assert res.exit_code == 0 and all(str(p) in res.stderr for p in planted + [odd])
    res, out = invoke("run", *GRID, "--results-dir", str(results))
    assert res.exit_code == 0, out
    assert f"{18 - len(planted)} already in" in res.output
    warned = [line for line in res.stderr.splitlines() if line.startswith("warning: record ")]
    assert all("its run is done again" in line for line in warned)  # one line each, no Python warning form
    assert sorted(str(p) for p in planted) == sorted(line.split()[2] for line in warned)
    for path in planted:
        rec = json.loads(path.read_text())
        assert record_problem(rec) is None and rec["status"] == "ok", path
    assert len(list(Store(results).iter_records())) == 18
    assert not list(results.rglob(".tmp-*"))


def test_run_redoes_a_record_of_another_identity(store, tmp_path):
    """A valid record copied over another run's file is not taken for that run."""
    results = shutil.copytree(store, tmp_path / "store")
    a, b = files(results, "target_only")[:2]
    shutil.copyfile(a, b)
    ident_b = json.loads(files(store, "target_only")[1].read_text())["identity"]
    st = Store(results)
    with pytest.warns(RecordWarning):
        assert st.get(ident_b) is None
    assert "identity" in st.rejected[b]
    res, out = invoke("run", *GRID, "--results-dir", str(results))
    assert res.exit_code == 0, out
    assert [line for line in res.stderr.splitlines() if line.startswith("warning: record ") and "identity" in line]
    assert json.loads(b.read_text())["identity"] == ident_b


# --- names that would leave runs/ -------------------------------------------------------

def _ident(task: str, method: str) -> dict:
    return run_identity(method, "1", {}, task, "1", 5, 0, 0, card_sha256="c", code_sha256="d")


@pytest.mark.parametrize("task,method", [("..", ".."), (".", "x"), ("", ""), ("../../etc", "a/../../b"),
                                         ("..\\..", "/abs"), ("x" * 400, "y"), ("\x00", "\u2025")])
def test_path_for_never_leaves_runs(tmp_path, task, method):
    st = Store(tmp_path / "results")
    path = st.path_for(_ident(task, method))
    runs = os.path.realpath(st.runs)
    assert os.path.commonpath([runs, os.path.realpath(path)]) == runs
    rel = path.relative_to(st.runs)
    assert len(rel.parts) == 3 and all(p not in ("", ".", "..") and len(p.encode()) <= 255 for p in rel.parts)
    rec = {"identity": _ident(task, method), "status": "failed"}
    written = st.write(rec)
    assert written == path and written.exists()
    assert [p for p in (tmp_path / "results").rglob("*") if p.is_file()] == [written]


def test_dot_names_do_not_share_a_folder_with_other_names(tmp_path):
    st = Store(tmp_path)
    folders = {st.path_for(_ident(t, "m")).parent.parent.name for t in ("..", ".", "", "__", "_", "%2E")}
    assert len(folders) == 6


# --- a full, read-only or unusable disk -------------------------------------------------

def _record(store: Path) -> dict:
    rec = json.loads(files(store, "target_only")[0].read_text())
    return copy.deepcopy(rec)


@pytest.mark.parametrize("err,advice", [(errno.ENOSPC, "free space"), (errno.EROFS, "permissions"),
                                        (errno.EACCES, "permissions"), (errno.EIO, "choose another")])
def test_write_failure_is_one_line_and_leaves_nothing(store, tmp_path, monkeypatch, err, advice):
    st = Store(tmp_path / "results")
    rec = _record(store)
    target = st.path_for(rec["identity"])

    def replace(src, dst):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(StoreError) as info:
        st.write(rec)
    msg = str(info.value)
    assert "\n" not in msg and str(target) in msg and f"[Errno {err}] {os.strerror(err)}" in msg and advice in msg
    assert "run the same command again" in msg
    assert not target.exists() and not list((tmp_path / "results").rglob(".tmp-*"))


def test_write_failure_while_writing_the_data(store, tmp_path, monkeypatch):
    """The disk fills up mid-write: the temporary file is removed, the old record is kept."""
    st = Store(tmp_path / "results")
    rec = _record(store)
    old = st.write(rec)
    before = old.read_bytes()
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            self.fh.write(data[:10])
            self.fh.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fdopen", lambda fd, mode: Full(real_fdopen(fd, mode)))
    rec["metrics"]["mean"]["rmsep"] = 123.0
    with pytest.raises(StoreError, match="No space left on device; free space"):
        st.write(rec)
    assert old.read_bytes() == before
    assert [p.name for p in old.parent.iterdir()] == [old.name]


def test_write_failure_making_the_folder(tmp_path, store):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    st = Store(blocker / "results")
    with pytest.raises(StoreError) as info:
        st.write(_record(store))
    assert "\n" not in str(info.value) and "cannot write record" in str(info.value)


def test_check_writable(tmp_path):
    st = Store(tmp_path / "fresh" / "results")
    st.check_writable()
    assert not (tmp_path / "fresh").exists()  # checked, and nothing left behind
    st.runs.mkdir(parents=True)
    st.check_writable()
    assert list(st.runs.iterdir()) == []
    blocker = tmp_path / "somefile"
    blocker.write_text("x")
    with pytest.raises(StoreError) as info:
        Store(blocker / "results").check_writable()
    msg = str(info.value)
    assert "\n" not in msg and str(blocker / "results") in msg and "not writable" in msg and "--results-dir" in msg
    (tmp_path / "runs_is_a_file").mkdir()
    (tmp_path / "runs_is_a_file" / "runs").write_text("x")
    with pytest.raises(StoreError, match="not writable"):
        Store(tmp_path / "runs_is_a_file").check_writable()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_check_writable_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(StoreError, match="Permission denied"):
            Store(ro).check_writable()
    finally:
        ro.chmod(0o700)


def test_check_writable_disk_full(tmp_path, monkeypatch):
    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    import tempfile

    monkeypatch.setattr(tempfile, "mkstemp", full)
    with pytest.raises(StoreError, match=r"\[Errno 28\] No space left on device"):
        Store(tmp_path).check_writable()


# --- the validator and the leaderboard on records in memory -----------------------------

def test_valid_records_pass_and_the_leaderboard_is_unchanged(store):
    from ctbench.metrics import METRICS
    from ctbench.store import RECORD_METRICS

    assert RECORD_METRICS == METRICS
    recs = list(Store(store).iter_records())
    assert len(recs) == 18 and all(record_problem(r) is None for r in recs)
    kept, notes = consistent_records(recs)
    assert kept is recs and notes == []
    # non-finite metrics are valid (R2 of a constant property is NaN, RPD can be infinite)
    r = copy.deepcopy(recs[0])
    r["metrics"]["per_property"]["analyte_a"].update(r2=float("nan"), rpd=float("inf"))
    assert record_problem(r) is None
    # a failed record needs no metrics
    r = copy.deepcopy(recs[0])
    r.update(status="failed", metrics=None, error={"type": "E", "message": "boom"})
    r.pop("residuals")
    assert record_problem(r) is None


def test_build_leaderboard_warns_and_skips_inconsistent_records(store):
    recs = list(Store(store).iter_records())
    bad = copy.deepcopy(recs)
    victim = next(r for r in bad if r["identity"]["method"] == "full_recalibration")
    victim["metrics"]["per_property"].pop("analyte_b")
    with pytest.warns(RecordWarning, match="its properties"):
        rows = build_leaderboard(bad, per_property=True)
    assert rows
    ok = [r for r in recs if r["_path"] != victim["_path"]]
    assert same_rows(rows, build_leaderboard(ok, per_property=True))


@pytest.mark.filterwarnings("ignore:constrained_layout not applied")  # a 300-character title
def test_odd_task_names_in_records_stay_inside_the_store_and_the_report(store, tmp_path):
    """Records whose task names hold path characters, dots only or hundreds of characters (made
    by hand or by an old version): stored inside runs/, and the leaderboard and the report work
    without writing anywhere else."""
    results = tmp_path / "store"
    st = Store(results)
    names = ["..", "../../escape", "x" * 300]
    for rec in Store(store).iter_records():
        for name in names:
            r = copy.deepcopy(rec)
            r.pop("_path")
            r["identity"]["task"] = name
            r["task"] = dict(r["task"], name=name)
            st.write(r)
    long_folder = "x" * 103 + "-" + hashlib.sha256(b"x" * 300).hexdigest()[:16]
    assert {p.parent.parent.name for p in results.rglob("*.json")} == {"%2E%2E", ".._.._escape", long_folder}
    res, out = invoke("leaderboard", "--include-synthetic", "--results-dir", str(results), "-f", "md")
    assert res.exit_code == 0 and "escape" in res.stdout, out
    out_dir = tmp_path / "deep" / "rep"
    res, out = invoke("report", "--include-synthetic", "--results-dir", str(results), "--out", str(out_dir), "--no-spectra")
    assert res.exit_code == 0, out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep", "store"]
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["rep"]
    assert all(len(p.name) <= 255 for p in out_dir.rglob("*"))
