"""Data layer: real datasets from the offline mirror, mirror / cache / download with sha256,
generic CSV / MATLAB loaders, and the `ctbench data` commands."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from ctbench.data import DataError, DataFile, Dataset
from ctbench.data import mirror
from ctbench.data.builtin import builtin_loaders, ctbench_register_loaders
from ctbench.data.loaders import (
    CORN_FILES,
    RAMAN_FILES,
    clear_loaded,
    load_csv,
    load_dataset,
    load_mat,
    load_tablet,
    raman_sample_id,
)

MIRROR = Path(os.environ.get("CTBENCH_DATA") or "/work/shared/datasets")
HPLC = DataFile(
    "chemotools/fermentation_hplc.csv", "00c9a2150c70697ac7f1a377d74fb78756100e20eb4fc24d46fd510ef844be0e"
)
LOADERS = {loader.name: loader for loader in builtin_loaders()}

needs_mirror = pytest.mark.skipif(not MIRROR.is_dir(), reason=f"dataset mirror {MIRROR} absent")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No mirror / offline settings leak in, and the cache is an empty temporary folder."""
    monkeypatch.delenv("CTBENCH_DATA", raising=False)
    monkeypatch.delenv("CTBENCH_OFFLINE", raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv("CTBENCH_CACHE", str(cache))
    return cache


def _copy(file: DataFile, folder: Path) -> Path:
    dest = folder / file.relpath
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(MIRROR / file.relpath, dest)
    return dest


# --- the real datasets ---------------------------------------------------------------------


@needs_mirror
def test_corn() -> None:
    ds = load_dataset(LOADERS["corn"], data_dir=MIRROR)
    assert isinstance(ds, Dataset) and ds.name == "corn"
    assert ds.properties == ("moisture", "oil", "protein", "starch")
    assert list(ds.instruments) == ["m5", "mp5", "mp6"]
    for name, s in ds.instruments.items():
        assert s.instrument == name and s.values.shape == (80, 700) and s.y.shape == (80, 4)
        assert s.axis_unit == "nm" and s.axis[0] == 1100 and s.axis[-1] == 2498
        assert s.sample_ids[0] == "corn-001" and s.sample_ids[-1] == "corn-080"
        assert s.source == str(MIRROR / "corn/corn.mat")
    assert np.array_equal(ds.instruments["m5"].y, ds.instruments["mp6"].y)
    assert ds.sha256 == {"corn/corn.mat": CORN_FILES[0].sha256}


@needs_mirror
def test_tablet_split_and_axis() -> None:
    ds = load_dataset(LOADERS["tablet"], data_dir=MIRROR)
    assert list(ds.instruments) == ["1", "2"] and ds.properties == ("weight", "hardness", "assay")
    a, b = ds.instruments["1"], ds.instruments["2"]
    assert a.values.shape == b.values.shape == (655, 650)
    assert (a.axis[0], a.axis[-1]) == (600, 1898)
    assert np.array_equal(a.sample_ids, b.sample_ids) and a.sample_ids[0] == "tablet-001"
    kinds, counts = np.unique(a.meta["sample_type"], return_counts=True)
    assert dict(zip(kinds.tolist(), counts.tolist())) == {"Train": 155, "Validate": 40, "Test": 460}
    assert len(ds.sha256) == 2


@needs_mirror
def test_raman_samples_match_across_devices() -> None:
    ds = load_dataset(LOADERS["raman"], data_dir=MIRROR)
    a532, a785, tg = (ds.instruments[k] for k in ("anton532", "anton785", "timegate"))
    assert a532.values.shape == (270, 1651) and a785.values.shape == (270, 1101) and tg.values.shape == (133, 511)
    assert all(s.axis_unit == "cm-1" for s in (a532, a785, tg))
    assert (a532.axis[0], a532.axis[-1]) == (200, 3500) and (a785.axis[0], a785.axis[-1]) == (100, 2300)
    assert 200 < tg.axis[0] < 202 and 1997 < tg.axis[-1] < 1999
    shared = set(a532.sample_ids) & set(a785.sample_ids)
    assert len(set(a532.sample_ids)) == 53 and len(shared) == 53
    assert len(shared & set(tg.sample_ids)) == 52
    assert ds.properties == ("glucose", "Na_acetate", "Mg_SO4")
    assert set(tg.meta) == {"MSM_present", "fold_idx"}
    # replicates of one sample share the id and the reference values
    first = a532.sample_ids == a532.sample_ids[0]
    assert first.sum() > 1 and np.ptp(a532.y[first], axis=0).max() == 0


def test_raman_sample_id_rounding() -> None:
    assert raman_sample_id(0.26335, 1.4357, -0.0) == "raman-0.263_1.436_0.000"
    assert raman_sample_id(0.2633501, 1.43570004, 1e-9) == raman_sample_id(0.26335, 1.4357, 0.0)


@needs_mirror
def test_load_dataset_is_memoized_and_read_only() -> None:
    clear_loaded()
    first = load_dataset(LOADERS["corn"], data_dir=MIRROR)
    assert load_dataset(LOADERS["corn"], data_dir=MIRROR) is first
    with pytest.raises(ValueError):
        first.instruments["m5"].values[0, 0] = 1.0


def test_synthetic_loader_and_hook() -> None:
    ds = load_dataset(LOADERS["synthetic"], options={"n_samples": 30})
    assert ds.synthetic and ds.instruments["synth_a"].n == 30
    assert {loader.name for loader in ctbench_register_loaders()} >= {"corn", "tablet", "raman", "csv", "mat"}
    with pytest.raises(DataError, match="did you mean 'seed'"):
        load_dataset(LOADERS["synthetic"], options={"sead": 1})


# --- mirror, cache, download, checksum -----------------------------------------------------


@needs_mirror
def test_checksum_mismatch_names_file_and_hashes(tmp_path: Path) -> None:
    bad = _copy(HPLC, tmp_path / "mirror")
    data = bytearray(bad.read_bytes())
    data[10] ^= 1
    bad.write_bytes(bytes(data))
    with pytest.raises(DataError) as err:
        mirror.resolve(HPLC, data_dir=tmp_path / "mirror")
    msg = str(err.value)
    assert "\n" not in msg and HPLC.relpath in msg and "before any run" in msg
    assert HPLC.sha256[:12] in msg and mirror.sha256_file(bad)[:12] in msg


def test_missing_file_offline_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ghost = DataFile("nowhere/ghost.csv", "0" * 64)
    with pytest.raises(DataError) as err:
        mirror.resolve(ghost, data_dir=tmp_path / "empty")
    msg = str(err.value)
    assert "\n" not in msg and "nowhere/ghost.csv" in msg
    assert "--data-dir DIR" in msg and "CTBENCH_DATA=DIR" in msg and "no download address" in msg
    assert str(tmp_path / "empty") in msg and "CTBENCH_DATA (not set)" in msg
    monkeypatch.setenv("CTBENCH_OFFLINE", "1")
    with pytest.raises(DataError, match="downloads disabled by CTBENCH_OFFLINE"):
        mirror.resolve(DataFile("nowhere/ghost.csv", "0" * 64, url="http://example.invalid/ghost.csv"))


@needs_mirror
def test_resolution_order_and_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_env: Path) -> None:
    cached = _copy(HPLC, clean_env)
    assert mirror.resolve(HPLC) == cached
    assert mirror.locate(HPLC).label == "cache"
    monkeypatch.setenv("CTBENCH_DATA", str(MIRROR))
    assert mirror.resolve(HPLC) == MIRROR / HPLC.relpath
    explicit = _copy(HPLC, tmp_path / "explicit")
    assert mirror.resolve(HPLC, data_dir=tmp_path / "explicit") == explicit


@needs_mirror
def test_download_into_cache_via_url(clean_env: Path) -> None:
    url = (MIRROR / HPLC.relpath).resolve().as_uri()
    got = mirror.resolve(DataFile(HPLC.relpath, HPLC.sha256, url))
    assert got == clean_env / HPLC.relpath and mirror.sha256_file(got) == HPLC.sha256
    wrong = DataFile("other/hplc.csv", "f" * 64, url)
    with pytest.raises(DataError, match="checksum mismatch for other/hplc.csv"):
        mirror.resolve(wrong)
    assert list((clean_env / "other").iterdir()) == []  # no partial file left behind


def test_sha256_memo_sees_changes(tmp_path: Path) -> None:
    f = tmp_path / "a.bin"
    f.write_bytes(b"abc")
    first = mirror.sha256_file(f)
    assert first == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert mirror.sha256_file(f) == first
    f.write_bytes(b"abd")
    os.utime(f, ns=(1, 1))
    assert mirror.sha256_file(f) != first


# --- generic loaders ------------------------------------------------------------------------


def _write_csv(path: Path, rows: list[str], header: str = "id,kind,fat,1002,1000,1004") -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_generic_csv_loader(tmp_path: Path) -> None:
    a = _write_csv(tmp_path / "a.csv", ["s1,cal,1.5,0.2,0.1,0.3", "s2,test,2.5,0.5,0.4,0.6"])
    b = _write_csv(tmp_path / "b.csv", ["s2,test,2.5,0.6,0.5,0.7", "s1,cal,1.5,0.3,0.2,0.4", "s1,cal,1.5,0.3,0.2,0.5"])
    ds = load_dataset(
        LOADERS["csv"],
        options={"files": {"instA": "a.csv", "instB": str(b)}, "properties": ["fat"], "id_column": "id",
                 "axis_unit": "nm", "base_dir": str(tmp_path), "name": "mine"},
    )
    assert ds.name == "mine" and ds.properties == ("fat",)
    sa, sb = ds.instruments["instA"], ds.instruments["instB"]
    assert np.array_equal(sa.axis, [1000, 1002, 1004])
    assert np.allclose(sa.values[0], [0.1, 0.2, 0.3])  # columns sorted by the axis
    assert sb.sample_ids.tolist() == ["s2", "s1", "s1"] and sb.y[:, 0].tolist() == [2.5, 1.5, 1.5]
    assert sa.meta["kind"].tolist() == ["cal", "test"] and sa.source == str(a)
    assert set(ds.sha256) == {"a.csv", str(b)} and ds.sha256[str(b)] == mirror.sha256_file(b)


def test_generic_csv_errors(tmp_path: Path) -> None:
    a = _write_csv(tmp_path / "a.csv", ["s1,cal,1.5,0.2,0.1,0.3", "s2,cal,1.5,0.2,0.1,0.3", "s3,x,2,0.1,nan,0.3"])
    b = _write_csv(tmp_path / "b.csv", ["s1,cal,1.5,0.2,0.1,0.3"])
    with pytest.raises(DataError) as err:
        load_csv([], {"files": {"A": str(a)}, "properties": ["fat"]})
    assert str(a) in str(err.value) and "data row 3" in str(err.value) and "NaN" in str(err.value)
    with pytest.raises(DataError, match="different row counts"):
        load_csv([], {"files": {"A": str(a), "B": str(b)}})
    with pytest.raises(DataError, match="did you mean 'fat'"):
        load_csv([], {"files": {"B": str(b)}, "properties": ["fta"]})
    with pytest.raises(DataError, match="did you mean 'id_column'"):
        load_csv([], {"files": {"B": str(b)}, "id_colum": "id"})
    with pytest.raises(DataError, match="not found"):
        load_csv([], {"files": {"B": str(tmp_path / "nope.csv")}})
    c = _write_csv(tmp_path / "c.csv", ["s1,cal,1.5,0.2,oops,0.3"])
    with pytest.raises(DataError, match=r"column '1000', data row 1: 'oops' is not a number"):
        load_csv([], {"files": {"C": str(c)}})


def test_generic_mat_loader(tmp_path: Path) -> None:
    import scipy.io

    rng = np.random.default_rng(0)
    f = tmp_path / "d.mat"
    scipy.io.savemat(f, {"xa": rng.random((4, 5)), "xb": rng.random((4, 5)), "y": rng.random((4, 2)),
                         "wl": np.arange(900.0, 910.0, 2.0)})
    ds = load_mat([], {"file": str(f), "spectra": {"a": "xa", "b": "xb"}, "y": "y",
                       "properties": ["p", "q"], "axis": "wl"})
    assert ds.instruments["b"].values.shape == (4, 5) and ds.properties == ("p", "q")
    assert ds.instruments["a"].axis[-1] == 908 and ds.sha256 == {str(f): mirror.sha256_file(f)}
    bad = rng.random((4, 5))
    bad[2, 1] = np.nan
    g = tmp_path / "g.mat"
    scipy.io.savemat(g, {"x": bad})
    with pytest.raises(DataError, match=r"g\.mat: spectrum in row 3 of variable 'x' "):
        load_mat([], {"files": {"a": str(g)}, "spectra": "x", "axis": [1, 2, 3, 4, 5]})
    with pytest.raises(DataError, match=r"no variable 'xx' \(did you mean"):
        load_mat([], {"file": str(f), "spectra": {"a": "xx"}, "axis": "wl"})


def test_tablet_files_must_agree(tmp_path: Path) -> None:
    header = "SampleType,weight,hardness,assay,600,602"
    one = _write_csv(tmp_path / "t1.csv", ["Train,1,2,3,0.1,0.2", "Test,1,2,3,0.1,0.2"], header)
    two = _write_csv(tmp_path / "t2.csv", ["Train,1,2,3,0.1,0.2", "Test,1,9,3,0.1,0.2"], header)
    with pytest.raises(DataError) as err:
        load_tablet([one, two], {})
    assert str(one) in str(err.value) and str(two) in str(err.value) and "data row 2" in str(err.value)
    three = _write_csv(tmp_path / "t3.csv", ["Train,1,2,3,0.1,0.2"], header)
    with pytest.raises(DataError, match="rows"):
        load_tablet([one, three], {})


# --- CLI ----------------------------------------------------------------------------------


def _cli() -> typer.Typer:
    from ctbench.cli.data import register

    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """test app"""

    register(app)
    return app


@needs_mirror
def test_cli_verify_and_list(tmp_path: Path) -> None:
    runner = CliRunner()
    app = _cli()
    env = {"COLUMNS": "250"}
    ok = runner.invoke(app, ["data", "verify", "--data-dir", str(MIRROR), "--dataset", "raman"], env=env)
    assert ok.exit_code == 0, ok.output
    assert ok.output.count(" ok ") == len(RAMAN_FILES) and "--data-dir" in ok.output

    bad = _copy(CORN_FILES[0], tmp_path / "mirror")
    with open(bad, "r+b") as fh:
        fh.seek(200)
        byte = fh.read(1)
        fh.seek(200)
        fh.write(bytes([byte[0] ^ 0xFF]))
    res = runner.invoke(app, ["data", "verify", "--data-dir", str(tmp_path / "mirror"), "--dataset", "corn"], env=env)
    assert res.exit_code == 1 and "MISMATCH" in res.output and CORN_FILES[0].sha256[:12] in res.output

    gone = runner.invoke(app, ["data", "verify", "--data-dir", str(tmp_path / "void")], env=env)
    assert gone.exit_code == 1 and "MISSING" in gone.output and "CTBENCH_DATA=DIR" in gone.output

    unknown = runner.invoke(app, ["data", "verify", "--dataset", "con"], env=env)
    assert unknown.exit_code == 2 and "did you mean 'corn'" in unknown.output

    listing = runner.invoke(app, ["data", "list"], env=env)
    assert listing.exit_code == 0 and "corn" in listing.output and "tablet" in listing.output
