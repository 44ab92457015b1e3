"""Spektron pretraining corpora: RRUFF zip and fermentation CSV (checksummed), the synthetic
generator, a user's CSV / JCAMP-DX / NPZ / HDF5 files, and the sharded batch sampler."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ctbench.data import DataError
from ctbench_spektron.corpus import PretrainCorpus, SpectralTable, SyntheticSpectra, build_corpus, parse_spec
from ctbench_spektron.corpus.resolve import resolve_file
from ctbench_spektron.corpus.rruff import RELPATH as RRUFF_FILE
from ctbench_spektron.corpus.rruff import load_rruff, parse_file_name, parse_rruff_text
from ctbench_spektron.corpus.userfiles import load_user_files, parse_options, read_jcamp
from ctbench_spektron.sampling import BatchSampler

G = 256
HAVE_DATA = (Path(__import__("os").environ.get("CTBENCH_DATA", "/nonexistent")) / RRUFF_FILE).is_file()
needs_data = pytest.mark.skipif(not HAVE_DATA, reason="dataset mirror not available (set CTBENCH_DATA)")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CTBENCH_CACHE", str(tmp_path / "cache"))


def test_parse_rruff_text_and_file_name():
    text = "##NAMES=Quartz\n##RRUFFID=R040031\n100.5, 3.0\n101.0, 4.5\n101.5,5.0\n##END=\n"
    header, axis, inten = parse_rruff_text(text)
    assert header["NAMES"] == "Quartz" and header["RRUFFID"] == "R040031"
    np.testing.assert_allclose(axis, [100.5, 101.0, 101.5])
    np.testing.assert_allclose(inten, [3.0, 4.5, 5.0])
    info = parse_file_name("excellent_unoriented/Svanbergite__R050549__Raman__780__0__unoriented__Raman_Data_Processed__32283.txt")
    assert info == {"mineral": "Svanbergite", "rruff_id": "R050549", "laser": "780"}


@needs_data
def test_rruff_loader_reads_the_zip_pairs_lasers_and_caches(tmp_path):
    t = load_rruff(grid_points=G, limit=120)
    assert t.values.shape == (t.n, G) and t.n > 100
    assert set(t.instruments) <= {"rruff_514nm", "rruff_532nm", "rruff_780nm", "rruff_785nm"}
    m = t.manifest[0]
    assert m["sha256"].startswith("aa7817197826") and m["n_spectra"] == t.n and not m["synthetic"]
    cached = list((tmp_path / "cache" / "spektron").glob("rruff-*.npz"))
    assert len(cached) == 1
    again = load_rruff(grid_points=G, limit=120)
    np.testing.assert_array_equal(again.values, t.values)
    # partners: same specimen, another laser
    for row, others in t.partners().items():
        assert (t.group[others] == t.group[row]).all()
        assert (t.instrument[others] != t.instrument[row]).all()


@needs_data
def test_fermentation_loader_keeps_the_clean_mir_window():
    t = build_corpus("fermentation", grid_points=G).table
    assert t.n > 900 and t.instruments == ["fermentation_mir"]
    assert np.abs(t.values).max() < 10 and (t.lo >= 900).all() and (t.hi <= 1780).all()
    assert t.manifest[0]["sha256"].startswith("31a68d3103f4")


def test_wrong_checksum_and_missing_file_are_one_line_errors(tmp_path):
    (tmp_path / "rruff").mkdir()
    (tmp_path / RRUFF_FILE).write_bytes(b"not the rruff zip")
    with pytest.raises(DataError, match="sha256"):
        resolve_file(RRUFF_FILE, "aa7817197826d3df9ef2cf59660ffc754c9cc3f51ca80d10f339e7a4bf133baa", tmp_path)
    with pytest.raises(DataError, match="--data-dir"):
        resolve_file("chemotools/no_such_file.csv", "0" * 64, tmp_path)


def test_corpus_spec_errors():
    assert parse_spec("rruff, synthetic") == ("rruff", "synthetic")
    with pytest.raises(DataError, match="did you mean 'rruff'"):
        parse_spec("ruff")
    with pytest.raises(DataError, match="needs a path"):
        parse_spec("files")
    assert parse_options("files:/a/b?unit=nm&domain=NIR") == ("/a/b", {"unit": "nm", "domain": "NIR"})
    with pytest.raises(DataError, match="unknown option"):
        parse_options("files:/a?colour=red")


def test_synthetic_generator_is_deterministic_paired_and_labelled():
    gen = SyntheticSpectra(grid_points=G)
    a = gen.sample(np.random.default_rng(3), 6)
    b = gen.sample(np.random.default_rng(3), 6)
    np.testing.assert_array_equal(a["values_a"], b["values_a"])
    assert a["values_a"].shape == a["values_b"].shape == (6, G)
    assert not np.allclose(a["values_a"], a["values_b"])  # two instruments
    assert np.isfinite(a["values_a"]).all()
    assert gen.manifest()["synthetic"] is True


def _write_jcamp_affn(path: Path) -> np.ndarray:
    y = np.array([10, 12, 15, 11, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 1, 2, 3, 4], dtype=float)
    lines = ["##TITLE=test", "##JCAMP-DX=4.24", "##XUNITS=1/CM", "##YUNITS=ABSORBANCE", "##FIRSTX=1000",
             "##LASTX=1017", "##XFACTOR=1", "##YFACTOR=0.5", f"##NPOINTS={y.size}", "##XYDATA=(X++(Y..Y))"]
    for i in range(0, y.size, 6):
        lines.append(f"{1000 + i} " + " ".join(str(int(v)) for v in y[i:i + 6]))
    lines.append("##END=")
    path.write_text("\n".join(lines))
    return y * 0.5


def test_jcamp_affn_and_compressed_asdf(tmp_path):
    y = _write_jcamp_affn(tmp_path / "a.jdx")
    [(axis, values, unit)] = read_jcamp(tmp_path / "a.jdx")
    assert unit == "cm-1"
    np.testing.assert_allclose(axis, np.arange(1000, 1018))
    np.testing.assert_allclose(values, y)
    # DIF/DUP form of 10 11 13 9 9 9 | 10 9: A0 = SQZ 10, J/K/m = DIF +1/+2/-4, % = DIF 0, T = DUP 2;
    # the second line starts with the Y-check value (I = 9, the previous line's last ordinate)
    text = "\n".join(["##TITLE=dif", "##XUNITS=NANOMETERS", "##FIRSTX=1", "##LASTX=8", "##NPOINTS=8", "##YFACTOR=1",
                      "##XYDATA=(X++(Y..Y))", "1A0JKm%T", "6IJj", "##END="])
    (tmp_path / "b.dx").write_text(text)
    [(axis, values, unit)] = read_jcamp(tmp_path / "b.dx")
    assert unit == "nm"
    np.testing.assert_allclose(values, [10, 11, 13, 9, 9, 9, 10, 9])


def test_user_folder_of_csv_jcamp_npz(tmp_path):
    axis = np.linspace(1100, 2500, 50)
    wide = "," .join(f"{a:.1f}" for a in axis) + "\n" + "\n".join(",".join(f"{v:.4f}" for v in np.sin(axis / 100 + k)) for k in range(3))
    (tmp_path / "wide.csv").write_text(wide)
    long = "wavenumber,s1,s2\n" + "\n".join(f"{a},{np.cos(a / 50):.4f},{np.sin(a / 70):.4f}" for a in np.linspace(200, 1800, 40))
    (tmp_path / "long.csv").write_text(long)
    _write_jcamp_affn(tmp_path / "c.jdx")
    np.savez(tmp_path / "d.npz", X=np.random.default_rng(0).random((2, 30)), axis=np.linspace(4000, 10000, 30), unit="cm-1")
    t = load_user_files(tmp_path, grid_points=G, domain="NIR")
    assert t.n == 3 + 2 + 1 + 2
    assert t.values.shape == (8, G) and np.isfinite(t.values).all()
    units = dict(zip(t.lo.round(1), t.unit))
    assert units[1100.0] == "nm" and units[200.0] == "cm-1" and units[4000.0] == "cm-1"
    assert t.manifest[0]["files"]["wide.csv"] == 3
    corpus = build_corpus(f"files:{tmp_path}?domain=NIR,synthetic", grid_points=G)
    assert corpus.table.n == 8 and corpus.synthetic is not None
    assert json.dumps(corpus.manifest())


def test_hdf5_without_h5py_is_a_clear_error(tmp_path):
    try:
        import h5py  # noqa: F401

        pytest.skip("h5py is installed")
    except ImportError:
        pass
    (tmp_path / "x.h5").write_bytes(b"\x89HDF\r\n\x1a\n")
    with pytest.raises(DataError, match="h5py"):
        load_user_files(tmp_path / "x.h5", grid_points=G)


def _toy_table(n=40) -> SpectralTable:
    rng = np.random.default_rng(0)
    return SpectralTable(
        values=rng.random((n, G)).astype(np.float32), lo=np.full(n, 100.0), hi=np.full(n, 1500.0),
        unit=np.full(n, "cm-1"), domain=np.full(n, 2), instrument=np.arange(n) % 2, instruments=["i0", "i1"],
        group=np.arange(n) // 2, nonneg=np.zeros(n, bool), source=np.zeros(n, int), sources=["toy"],
    )


def test_sampler_shards_the_global_batch_like_distributed_sampler():
    corpus = PretrainCorpus(table=_toy_table(), synthetic=SyntheticSpectra(grid_points=G), spec=("toy", "synthetic"))
    single = BatchSampler(corpus, 8, synthetic_fraction=0.25, pair_fraction=0.5, seed=1, world_size=1)
    shards = [BatchSampler(corpus, 4, synthetic_fraction=0.25, pair_fraction=0.5, seed=1, rank=r, world_size=2) for r in (0, 1)]
    g = single.global_batch(5)
    parts = [s.batch(5) for s in shards]
    assert [p.n for p in parts] == [4, 4]
    both = np.concatenate([parts[0].values_a, parts[1].values_a])
    np.testing.assert_array_equal(np.sort(both.sum(1)), np.sort(g.values_a.sum(1)))  # same rows, split across ranks
    np.testing.assert_array_equal(shards[0].batch(5).values_a, parts[0].values_a)  # deterministic per step
    assert g.has_partner.sum() >= 4  # natural pairs + synthetic pairs
    paired = g.has_partner & (g.instrument_a < 2)
    assert (g.instrument_a[paired] != g.instrument_b[paired]).all()
