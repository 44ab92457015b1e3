"""A user's own data: the csv loader's layouts (separators, decimal comma, blank id header, a
references file, missing reference values), the card hint for misplaced loader keys, and
`ctbench tasks new`.

Every data file here is SYNTHETIC (made up in the test, written to tmp_path), except the one test
marked as reading the real IDRC 2016 wheat files of the dataset mirror.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ctbench.cards import CardError, load_card, parse_card
from ctbench.cli.main import app
from ctbench.data.loaders import load_csv, read_csv_dataset, sniff_csv
from ctbench.data.spectra import DataError
from ctbench.tasks import build_task

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()

AXIS = (1100.0, 1100.5, 1101.0, 1101.5)


def synthetic_rows(n: int = 12, gain: float = 1.0, seed: int = 0, p: int = 40) -> tuple[list[str], np.ndarray, np.ndarray]:
    """SYNTHETIC spectra: ids s01.., a property, and spectra linear in it (plus small noise)."""
    rng = np.random.default_rng(seed)
    ids = [f"s{i + 1:02d}" for i in range(n)]
    y = np.round(rng.uniform(5, 15, n), 3)
    shape = np.sin(np.linspace(0, 3, p))
    x = gain * (y[:, None] * shape[None, :] / 10 + 0.5) + rng.normal(scale=0.002, size=(n, p))
    return ids, y, x


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def table(header: list[str], rows: list[list[object]], sep: str = ",", decimal: str = ".") -> str:
    def cell(v: object) -> str:
        s = v if isinstance(v, str) else f"{v:.6g}"
        return s.replace(".", ",") if decimal == "," and not isinstance(v, str) else s

    return "\n".join([sep.join(header)] + [sep.join(cell(v) for v in r) for r in rows]) + "\n"


# --- separators, decimal comma, headers ---------------------------------------------------------

SMALL = [["a", 1.5, 0.1, 0.2, 0.3, 0.4], ["b", 2.5, 0.5, 0.6, 0.7, 0.8], ["c", 3.25, 0.9, 1.0, 1.1, 1.2]]


@pytest.mark.parametrize(
    "sep, decimal, name",
    [(",", ".", "comma"), (";", ".", "semicolon"), ("\t", ".", "tab"), (" ", ".", "whitespace"), (";", ",", "semicolon")],
)
def test_separator_and_decimal_comma_are_detected(tmp_path, sep, decimal, name):
    """SYNTHETIC 3-row files written with each separator (and a decimal comma with ';')."""
    header = ["id", "fat", *[(str(a).replace(".", ",") if decimal == "," else str(a)) for a in AXIS]]
    f = write(tmp_path / "a.csv", table(header, SMALL, sep, decimal))
    layout = sniff_csv(f)
    assert (layout.sep_name, layout.decimal, layout.detected) == (name, decimal, True)
    ds = load_csv([], {"files": {"A": str(f)}, "properties": ["fat"], "id_column": "id"})
    s = ds.instruments["A"]
    assert s.axis.tolist() == list(AXIS) and s.sample_ids.tolist() == ["a", "b", "c"]
    assert np.allclose(s.values[1], [0.5, 0.6, 0.7, 0.8]) and s.y[:, 0].tolist() == [1.5, 2.5, 3.25]


def test_explicit_sep_and_decimal_still_work(tmp_path):
    f = write(tmp_path / "a.txt", table(["id", "fat", "1100", "1101"], [["a", 1.5, 0.1, 0.2], ["b", 2.5, 0.3, 0.4]], ";", ","))
    s = load_csv([], {"files": {"A": str(f)}, "properties": ["fat"], "id_column": "id", "sep": ";", "decimal": ","})
    assert s.instruments["A"].y[:, 0].tolist() == [1.5, 2.5]
    s = load_csv([], {"files": {"A": str(f)}, "properties": ["fat"], "id_column": "id", "sep": "semicolon"})
    assert s.instruments["A"].values.tolist() == [[0.1, 0.2], [0.3, 0.4]]
    excel = write(tmp_path / "excel.csv", "sep=;\nid;fat;1100;1101\na;1,5;0,1;0,2\nb;2,5;0,3;0,4\n")  # Excel's sep line
    s = load_csv([], {"files": {"A": str(excel)}, "properties": ["fat"], "id_column": "id"})
    assert s.instruments["A"].y[:, 0].tolist() == [1.5, 2.5] and s.instruments["A"].axis.tolist() == [1100, 1101]
    with pytest.raises(DataError, match="option 'sep' must be"):
        load_csv([], {"files": {"A": str(f)}, "sep": "|"})
    with pytest.raises(DataError, match="cannot use a decimal comma"):
        load_csv([], {"files": {"A": str(f)}, "sep": ",", "decimal": ","})


def test_undetectable_separator_is_one_line(tmp_path):
    f = write(tmp_path / "odd.csv", "id|1100|1101\na|1|2|3|4\nb|1\n")
    with pytest.raises(DataError) as err:
        load_csv([], {"files": {"A": str(f)}})
    msg = str(err.value)
    assert "\n" not in msg and str(f) in msg and "cannot tell the column separator" in msg and "sep" in msg


def test_spectral_headers_numbers_units_and_duplicates(tmp_path):
    """1100 and 1100.5 are axis positions; '1100 nm' is not (the error says to write the number);
    a header given twice is refused rather than renamed by pandas (1100 -> 1100.1)."""
    f = write(tmp_path / "a.csv", "id,1100,1100.5,1e3\na,1,2,3\nb,4,5,6\n")
    assert load_csv([], {"files": {"A": str(f)}, "id_column": "id"}).instruments["A"].axis.tolist() == [1000, 1100, 1100.5]
    g = write(tmp_path / "g.csv", "id,1100 nm,1102 nm\na,1,2\nb,4,5\n")
    with pytest.raises(DataError, match=r"no spectral columns .*'1100 nm' carry a unit: write the plain number \(e\.g\. 1100\)"):
        load_csv([], {"files": {"A": str(g)}, "id_column": "id"})
    h = write(tmp_path / "h.csv", "id,1100,1100,1101\na,1,2,3\nb,4,5,6\n")
    with pytest.raises(DataError, match=r"column '1100' appears twice in the header \(columns 2 and 3\)"):
        load_csv([], {"files": {"A": str(h)}, "id_column": "id"})


# --- blank id header ----------------------------------------------------------------------------


def test_blank_id_header_is_the_id_column(tmp_path):
    """SYNTHETIC: a first column with a blank header holds the ids (the rows of b are in another
    order; they pair by id). ``id_column: ""`` names it explicitly."""
    a = write(tmp_path / "a.csv", ",fat,1100,1101\nx7,1,0.1,0.2\n007,2,0.3,0.4\n")
    b = write(tmp_path / "b.csv", ";fat;1100;1101\n007;2;0,5;0,6\nx7;1;0,7;0,8\n")
    for extra in ({}, {"id_column": ""}):
        ds = load_csv([], {"files": {"A": str(a), "B": str(b)}, "properties": ["fat"], **extra})
        assert ds.instruments["A"].sample_ids.tolist() == ["x7", "007"]  # read as text: 007 stays 007
        assert ds.instruments["B"].sample_ids.tolist() == ["007", "x7"]
        assert "Unnamed: 0" not in ds.instruments["A"].meta
    # R's write.table: the header one field short of the rows
    r = write(tmp_path / "r.txt", '"fat" "1100" "1101"\n"x7" 1 0.1 0.2\n"007" 2 0.3 0.4\n')
    assert load_csv([], {"files": {"R": str(r)}, "properties": ["fat"]}).instruments["R"].sample_ids.tolist() == ["x7", "007"]
    # a blank-headed numeric column with repeats is data, not ids: rows pair by position
    c = write(tmp_path / "c.csv", ",1100,1101\n1,0.1,0.2\n1,0.3,0.4\n")
    s = load_csv([], {"files": {"C": str(c)}}).instruments["C"]
    assert s.sample_ids.tolist() == ["row-001", "row-002"] and s.meta["Unnamed: 0"].tolist() == ["1", "1"]
    with pytest.raises(DataError, match="blank header, but every column of the file has a name"):
        load_csv([], {"files": {"A": str(write(tmp_path / "n.csv", "id,1100\na,1\n"))}, "id_column": ""})


def test_blank_id_in_one_file_only_is_refused(tmp_path):
    a = write(tmp_path / "a.csv", ",1100,1101\nx,0.1,0.2\ny,0.3,0.4\n")
    b = write(tmp_path / "b.csv", "k,1100,1101\n1,0.1,0.2\n2,0.3,0.4\n")
    with pytest.raises(DataError, match=r"b\.csv: no sample-id column, while .*a\.csv has one"):
        load_csv([], {"files": {"A": str(a), "B": str(b)}})


# --- references file, missing values ------------------------------------------------------------


def test_references_file_joined_by_id(tmp_path):
    """SYNTHETIC: spectra-only files plus a references file in its own order, with a row for a
    sample no file has (ignored, counted), no row for one sample (NaN, counted), and empty / NA
    cells (NaN)."""
    a = write(tmp_path / "a.csv", "sample,1100,1101\ns1,0.1,0.2\ns2,0.3,0.4\ns3,0.5,0.6\ns1,0.11,0.21\n")
    b = write(tmp_path / "b.csv", "sample;1100;1101\ns3;1;2\ns1;3;4\ns2;5;6\n")
    refs = write(tmp_path / "refs.csv", "sample,fat,protein,batch\ns2,2.5,NA,B\ns9,9,9,Z\ns1,1.5,,A\n")
    ds, report = read_csv_dataset({"files": {"A": "a.csv", "B": "b.csv"}, "references": "refs.csv",
                                   "id_column": "sample", "base_dir": str(tmp_path)})
    assert ds.properties == ("fat", "protein")  # numeric columns of the references file
    sa, sb = ds.instruments["A"], ds.instruments["B"]
    assert np.array_equal(sa.y, [[1.5, np.nan], [2.5, np.nan], [np.nan, np.nan], [1.5, np.nan]], equal_nan=True)
    assert np.array_equal(sb.y[:, 0], [np.nan, 1.5, 2.5], equal_nan=True)
    assert sa.meta["batch"].tolist() == ["A", "B", "", "A"]  # other reference columns: metadata
    assert report.unmatched_references == 1 and report.without_reference == {"A": 1, "B": 1}
    assert report.properties_from == {"fat": "references", "protein": "references"}
    assert str(refs) in ds.sha256 or "refs.csv" in ds.sha256
    # properties named: from the references file when it has them, else from every instrument file
    a2 = write(tmp_path / "a2.csv", "sample,moist,1100\ns1,7,0.1\ns2,8,0.3\n")
    b2 = write(tmp_path / "b2.csv", "sample,moist,1100\ns2,8,1\ns1,7,3\n")
    ds = load_csv([], {"files": {"A": str(a2), "B": str(b2)}, "references": str(refs), "id_column": "sample",
                       "properties": ["moist", "fat"]})
    assert ds.instruments["B"].y.tolist() == [[8, 2.5], [7, 1.5]]
    # the references file's id column may differ
    r2 = write(tmp_path / "r2.csv", ",fat\ns1,1\ns2,2\ns3,3\n")
    ds = load_csv([], {"files": {"A": str(a), "B": str(b)}, "references": str(r2), "id_column": "sample",
                       "references_id_column": ""})
    assert ds.instruments["B"].y[:, 0].tolist() == [3, 1, 2]


def test_references_file_errors_are_one_line(tmp_path):
    a = write(tmp_path / "a.csv", "sample,1100,1101\ns1,0.1,0.2\ns2,0.3,0.4\n")
    b = write(tmp_path / "b.csv", "1100,1101\n0.1,0.2\n0.3,0.4\n")
    refs = write(tmp_path / "refs.csv", "sample,fat\ns1,1.5\ns2,oops\ns3,1\n")
    base = {"files": {"A": str(a)}, "references": str(refs), "id_column": "sample"}
    cases = [
        ({**base}, rf"{refs}: reference column 'fat', data row 2: 'oops' is not a number"),
        ({**base, "files": {"A": str(a), "B": str(b)}}, r"b\.csv: no sample-id column"),
        ({**base, "files": {"B": str(b)}, "id_column": None}, r"every instrument file needs a sample-id column"),
        ({**base, "references": str(write(tmp_path / "d.csv", "sample,fat\ns1,1\ns1,2\n"))},
         r"sample id 's1' is in data rows 1 and 2; a references file has one row per sample"),
        ({**base, "references_id_column": "smaple"}, r"no sample-id column 'smaple' \(did you mean 'sample'\?\)"),
        ({**base, "references": str(write(tmp_path / "e.csv", "key,fat\ns1,1\n"))},
         r"no sample-id column 'sample' .*name the references file's own with references_id_column"),
        ({**base, "references": str(tmp_path / "none.csv")}, r"references file not found"),
    ]
    for options, pattern in cases:
        with pytest.raises(DataError, match=pattern) as err:
            load_csv([], options)
        assert "\n" not in str(err.value)


def test_missing_reference_values_in_instrument_files_are_nan(tmp_path):
    """SYNTHETIC: empty, NA and NaN reference cells become NaN (the sample is left out of that
    property only, later); text is still an error naming file, row and column; so is inf."""
    a = write(tmp_path / "a.csv", "id,fat,prot,1100,1101\ns1,1.5,,0.1,0.2\ns2,NA,2,0.3,0.4\ns3,NaN,3,0.5,0.6\ns4,4,4,0.7,0.8\n")
    y = load_csv([], {"files": {"A": str(a)}, "id_column": "id", "properties": ["fat", "prot"]}).instruments["A"].y
    assert np.array_equal(y, [[1.5, np.nan], [np.nan, 2], [np.nan, 3], [4, 4]], equal_nan=True)
    c = write(tmp_path / "c.csv", "id;fat;1100\ns1;1,5;0,1\ns2;;0,2\ns3;n.d.;0,3\n")
    with pytest.raises(DataError, match=rf"{c}: property column 'fat', data row 3: 'n\.d\.' is not a number"):
        load_csv([], {"files": {"A": str(c)}, "id_column": "id", "properties": ["fat"]})
    d = write(tmp_path / "d.csv", "id,fat,1100\ns1,inf,0.1\n")
    with pytest.raises(DataError, match=r"property column 'fat', data row 1: the value is infinite"):
        load_csv([], {"files": {"A": str(d)}, "id_column": "id", "properties": ["fat"]})


# --- cards: loader keys at the top level --------------------------------------------------------


def test_loader_keys_at_top_level_point_to_loader_options():
    text = ("name: mine\nversion: 1\ndataset: csv\nsource: a\ntarget: b\nfiles: {a: a.csv, b: b.csv}\n"
            "test: {strategy: kfold}\n")
    with pytest.raises(CardError) as err:
        parse_card(text, "mine.yaml")
    msg = str(err.value)
    assert msg.startswith("mine.yaml: unknown key 'files'") and "loader_options:" in msg and "docs/your-data.md" in msg
    assert "\n" not in msg
    with pytest.raises(CardError, match="'id_column' is a loader option"):
        parse_card(text.replace("files:", "id_column: id\nloader_options:\n  files:"), "mine.yaml")
    with pytest.raises(CardError, match=r"unknown key 'flies' \(did you mean 'files'|unknown key 'flies'"):
        parse_card(text.replace("files:", "flies:"), "mine.yaml")


# --- ctbench tasks new --------------------------------------------------------------------------


def write_pair(folder: Path, n: int = 30, missing: int = 0) -> dict[str, Path]:
    """SYNTHETIC instrument files A (';' + decimal comma, blank id header) and B (tab, rows
    reversed), and a references file (conc, fat) with ``missing`` empty conc cells."""
    folder.mkdir(parents=True, exist_ok=True)
    ids, y, xa = synthetic_rows(n, 1.0, seed=1)
    _, _, xb = synthetic_rows(n, 1.1, seed=2)
    axis = [f"{1000 + 2 * j}" for j in range(xa.shape[1])]
    a_rows = [[i, *row] for i, row in zip(ids, xa)]
    b_rows = [[i, *row] for i, row in zip(ids, xb)][::-1]
    files = {
        "A": write(folder / "a.csv", table(["", *[v.replace(".", ",") for v in axis]], a_rows, ";", ",")),
        "B": write(folder / "b.tsv", table(["", *axis], b_rows, "\t")),
        "refs": write(folder / "refs.csv", table(["sample", "conc", "fat"], [[i, "" if k < missing else v, v / 2 + 1]
                                                                       for k, (i, v) in enumerate(zip(ids, y))])),
    }
    return files


def tasks_new(*args: str, **env: str):
    return runner.invoke(app, ["tasks", "new", *args], env={"COLUMNS": "200", **env})


def test_tasks_new_end_to_end(tmp_path):
    f = write_pair(tmp_path / "data", missing=3)
    out = tmp_path / "cards"
    res = tasks_new("mine", "--file", f"A={f['A']}", "--file", f"B={f['B']}", "--references", str(f["refs"]),
                    "--out", str(out))
    assert res.exit_code == 0, res.output
    text = res.output
    for expected in ("semicolon-separated (detected), decimal comma", "tab-separated (detected)",
                     "ids in the blank-headed first column", "ids in column 'sample'", "axis unit: nm",
                     "properties: conc, fat", "source -> target: A -> B", "paired samples: 30",
                     "missing references (left out of that property only): conc 3 of 30, fat 0 of 30",
                     "wrote ", "# loaded:", "ctbench run -t ", "ctbench leaderboard -t mine"):
        assert expected in text, (expected, text)
    card = load_card(str(out / "mine.yaml"))
    assert card.dataset == "csv" and card.source == "A" and card.properties == ("conc", "fat")
    assert card.loader_options["files"] == {"A": str(f["A"].resolve()), "B": str(f["B"].resolve())}
    assert card.loader_options["id_column"] == "" and card.loader_options["references_id_column"] == "sample"
    task = build_task(card)
    assert task.X_source.shape[0] == 30 and np.isnan(task.y).sum(axis=0).tolist() == [3, 0]
    # refused without --force; --force overwrites
    again = tasks_new("mine", "--file", f"A={f['A']}", "--file", f"B={f['B']}", "--references", str(f["refs"]),
                      "--out", str(out / "mine.yaml"))
    assert again.exit_code == 2 and "already exists; pass --force" in again.output
    forced = tasks_new("mine", "--file", f"A={f['A']}", "--file", f"B={f['B']}", "--references", str(f["refs"]),
                       "--out", str(out), "--force", "--test", "random", "--fraction", "0.3", "--alignment", "overlap")
    assert forced.exit_code == 0, forced.output
    card = load_card(str(out / "mine.yaml"))
    assert card.test["strategy"] == "random" and card.alignment["mode"] == "overlap"


def test_tasks_new_relative_paths_and_ctbench_tasks(tmp_path):
    """Data inside the card's folder is named relative to it; a card in $CTBENCH_TASKS is found by name."""
    folder = tmp_path / "project"
    f = write_pair(folder / "data")
    res = tasks_new("rel_task", "--file", f"A={f['A']}", "--file", f"B={f['B']}", "--references", str(f["refs"]),
                    "--properties", "conc", "--folds", "3", CTBENCH_TASKS=str(folder))
    assert res.exit_code == 0, res.output
    card_file = folder / "rel_task.yaml"
    card = load_card(str(card_file))
    assert card.loader_options["files"] == {"A": "data/a.csv", "B": "data/b.tsv"} and card.test["folds"] == 3
    assert "ctbench run -t rel_task " in res.output and "ctbench tasks show rel_task" in res.output


def test_tasks_new_needs_flags_without_a_terminal(tmp_path):
    f = write_pair(tmp_path / "data")
    c = write(tmp_path / "data" / "c.csv", (tmp_path / "data" / "a.csv").read_text())
    three = ["--file", f"A={f['A']}", "--file", f"B={f['B']}", "--file", f"C={c}", "--references", str(f["refs"])]
    res = tasks_new("x", *three, "--out", str(tmp_path))
    assert res.exit_code == 2 and res.output.strip().splitlines() == [
        "error: 3 instruments (A, B, C): give --source"]
    res = tasks_new("x", *three, "--source", "C", "--target", "D", "--out", str(tmp_path))
    assert res.exit_code == 2 and "--target 'D' is not one of the instruments" in res.output
    # Raman-like axis 200-1998: nm or cm-1 cannot be told
    ids, y, x = synthetic_rows(10, p=4)
    for name in ("r1", "r2"):
        write(tmp_path / f"{name}.csv", table(["id", "c", "201.3", "640.2", "1300.9", "1998.1"],
                                              [[i, v, *row] for i, v, row in zip(ids, y, x)]))
    res = tasks_new("r", "--file", f"a={tmp_path / 'r1.csv'}", "--file", f"b={tmp_path / 'r2.csv'}", "--out", str(tmp_path))
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1
    assert "give --axis-unit nm or --axis-unit cm-1" in res.output
    res = tasks_new("r", "--file", f"a={tmp_path / 'r1.csv'}", "--file", f"b={tmp_path / 'r2.csv'}", "--out", str(tmp_path),
                    "--axis-unit", "cm-1", "--folds", "2", "--shots", "2")
    assert res.exit_code == 0, res.output
    assert load_card(str(tmp_path / "r.yaml")).loader_options["axis_unit"] == "cm-1"


def test_tasks_new_asks_on_a_terminal(tmp_path, monkeypatch):
    import ctbench.cli.tasks_new as tn

    monkeypatch.setattr(tn, "_is_interactive", lambda: True)
    f = write_pair(tmp_path / "data")
    c = write(tmp_path / "data" / "c.csv", (tmp_path / "data" / "a.csv").read_text())
    res = runner.invoke(app, ["tasks", "new", "asked", "--file", f"A={f['A']}", "--file", f"B={f['B']}", "--file",
                              f"C={c}", "--references", str(f["refs"]), "--out", str(tmp_path)], input="C\nB\n")
    assert res.exit_code == 0, res.output
    card = load_card(str(tmp_path / "asked.yaml"))
    assert (card.source, card.target) == ("C", "B")


def test_tasks_new_bad_files_are_one_line_errors(tmp_path):
    f = write_pair(tmp_path / "data")
    bad = write(tmp_path / "bad.csv", ",1000,1002\nx,0.1,oops\ny,0.2,0.3\n")
    cases = [
        (["--file", f"A={f['A']}", "--file", f"B={bad}", "--references", str(f["refs"])], "'oops' is not a number"),
        (["--file", f"A={f['A']}", "--file", f"B={tmp_path / 'missing.csv'}"], "file not found"),
        (["--file", f"A={f['A']}"], "at least two instruments"),
        (["--file", f"A={f['A']}", "--file", f"B={f['B']}", "--references", str(f["refs"]), "--properties", "cnoc"],
         "no property column 'cnoc'"),
        (["--file", f"A={f['A']}", "--file", f"B={f['B']}", "--references", str(f["refs"]), "--test", "official"],
         "give --meta-key"),
    ]
    for args, expected in cases:
        res = tasks_new("bad", *args, "--out", str(tmp_path / "cards"))
        lines = res.output.strip().splitlines()
        assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], res.output
    assert not (tmp_path / "cards" / "bad.yaml").exists()
    res = tasks_new("no/slash", "--file", f"A={f['A']}", "--file", f"B={f['B']}")
    assert res.exit_code == 2 and "is not allowed" in res.output


def test_tasks_new_help_is_quick_and_registered():
    res = runner.invoke(app, ["tasks", "new", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "--references" in res.output and "--axis-unit" in res.output
    code = ("import sys, ctbench.cli.main; heavy = [m for m in ('pandas', 'scipy', 'torch', 'sklearn') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


# --- the worked example of docs/your-data.md, on real data --------------------------------------


def test_worked_example_on_real_wheat_data(tmp_path, mirror):
    """REAL data (IDRC 2016 wheat A1, A2 from the mirror), turned by the example script into
    semicolon / decimal-comma spectra files with a blank id header plus a references file."""
    env = {**os.environ, "CTBENCH_DATA": str(mirror)}
    script = REPO / "examples" / "your-data" / "make_wheat_csvs.py"
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "my-wheat")], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    d = tmp_path / "my-wheat"
    res = tasks_new("my_wheat_a1_a2", "--file", f"A1={d / 'spectra_A1.csv'}", "--file", f"A2={d / 'spectra_A2.csv'}",
                    "--references", str(d / "references.csv"), "--out", str(d))
    assert res.exit_code == 0, res.output
    assert "paired samples: 247" in res.output and "741 points 730-1100 nm" in res.output
    task = build_task(load_card(str(d / "my_wheat_a1_a2.yaml")))
    builtin = build_task(load_card("wheat_a1_a2"))
    # the same spectra and protein values as the built-in loader's, paired the same way
    order = np.argsort(task.groups)
    ref_order = np.argsort([g.removeprefix("wheat-") for g in builtin.groups])
    assert np.allclose(task.X_target[order], builtin.X_target[ref_order])
    assert np.allclose(task.y[order], builtin.y[ref_order])
