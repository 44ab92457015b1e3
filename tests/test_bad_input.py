"""Bad cards, parameters and paths (issue 13): each is one `error:` line with exit code 2 (or a
warning and a skipped card in `ctbench tasks`), quickly and in bounded memory, never a traceback."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ctbench.cards import CardError, load_card, parse_card
from ctbench.store import Store

runner = CliRunner()

GOOD = """\
name: {name}
version: "1"
dataset: synthetic
source: synth_a
target: synth_b
test: {{strategy: random, fraction: 0.25}}
"""


def card(tmp_path: Path, text: str, file: str = "card.yaml") -> str:
    path = tmp_path / file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def good(name: str = "mine", extra: str = "") -> str:
    return GOOD.format(name=name) + extra


def no_records(results: Path) -> bool:
    runs = results / "runs"
    return not runs.exists() or not list(runs.rglob("*.json"))


def invoke(*args: str):
    from ctbench.cli.main import app

    return runner.invoke(app, list(args))


def run_args(task: str, results: Path, *extra: str) -> list[str]:
    return ["run", "-t", task, "--shots", "5", "--reps", "1", "--no-mlflow", "--results-dir", str(results), *extra]


def assert_one_line_error(res, *fragments: str) -> str:
    """Exit code 2, stderr is exactly one line starting with 'error:', no traceback."""
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert not isinstance(res.exception, Exception) or isinstance(res.exception, SystemExit), res.exception
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.output
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def limited_cli(args: list[str], env: dict | None = None, mem_gb: float = 2.0, timeout: float = 60):
    """`python -m ctbench ARGS` in a child limited to ``mem_gb`` of address space."""

    def limit():
        n = int(mem_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (n, n))

    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "ctbench", *args], capture_output=True, text=True, timeout=timeout,
                         preexec_fn=limit, env={**os.environ, **(env or {})})
    return res, time.perf_counter() - t0


# --- 1. YAML alias bombs ------------------------------------------------------------------------


def _bomb_lines(levels: int = 9) -> list[str]:
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return lines


def test_alias_bomb_in_loader_options_is_refused_fast(tmp_path):
    text = good("bomb").replace("dataset: synthetic", "dataset: csv") + "loader_options:\n" + "".join(
        f"  {line}\n" for line in _bomb_lines())
    path = card(tmp_path, text)
    res, elapsed = limited_cli(run_args(path, tmp_path / "r", "-m", "sbc"))
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: line 8: YAML anchors and aliases are not allowed")
    assert elapsed < 20  # well under a second of work; the rest is interpreter start-up on a slow machine
    t0 = time.perf_counter()
    with pytest.raises(CardError, match="anchors and aliases are not allowed"):
        parse_card(text, "card.yaml")
    assert time.perf_counter() - t0 < 1


def test_alias_bomb_in_param_is_refused_fast(tmp_path):
    levels = [f"&a0 [{', '.join(['1'] * 9)}]"] + [
        f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    res, elapsed = limited_cli(run_args("synthetic_a_b", tmp_path / "r", "-m", "sbc", "--param", f"mode=[{', '.join(levels)}]"))
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip() == ("error: --param mode: YAML anchors and aliases are not allowed (anchor &a0); write the "
                                  "value out (quote it if it is a string starting with & or *)")
    assert elapsed < 20
    assert no_records(tmp_path / "r")


def test_anchor_or_alias_anywhere_in_a_card_is_refused(tmp_path):
    text = good("anch", "shots: &s [5, 10]\n")
    with pytest.raises(CardError, match=r"line 7: YAML anchors and aliases are not allowed \(anchor &s\)"):
        parse_card(text, "card.yaml")


def test_oversized_or_deeply_nested_or_binary_card(tmp_path):
    big = card(tmp_path, good("big", "description: " + "x" * (1024 * 1024 + 10) + "\n"), "big.yaml")
    assert_one_line_error(invoke(*run_args(big, tmp_path / "r", "-m", "sbc")), "a card is at most 1024 KiB")
    deep = card(tmp_path, good("deep", "loader_options: {x: " + "[" * 100 + "]" * 100 + "}\n"), "deep.yaml")
    assert_one_line_error(invoke(*run_args(deep, tmp_path / "r", "-m", "sbc")), "nested more than 32 levels deep")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"name: bin\n\xff\xfe\x00")
    assert_one_line_error(invoke(*run_args(str(binary), tmp_path / "r", "-m", "sbc")), "must be UTF-8 text")
    (tmp_path / "folder.yaml").mkdir()
    assert_one_line_error(invoke(*run_args(str(tmp_path / "folder.yaml"), tmp_path / "r", "-m", "sbc")),
                          "task card file not found", "(it is a folder)")
    assert_one_line_error(invoke(*run_args("/nope/" + "x" * 300 + ".yaml", tmp_path / "r", "-m", "sbc")), "task card file")
    assert no_records(tmp_path / "r")


# --- 2. alignment grid --------------------------------------------------------------------------


@pytest.mark.parametrize("alignment, message", [
    ("{mode: grid, start: 0, stop: 1e18, step: 1}", "the alignment grid 0..1e+18 step 1 has 1e+18 points, at most 100000"),
    ("{mode: grid, start: 0, stop: 1.0e+18, step: 1}", "has 1e+18 points"),
    ("{mode: grid, start: -1.0e+308, stop: 1.0e+308, step: 1.0e-300}", "has inf points"),
    ("{mode: grid, start: 0, stop: 100, step: 0}", "alignment.step must be positive, got 0"),
    ("{mode: grid, start: 0, stop: 100, step: -1}", "alignment.step must be positive, got -1"),
    ("{mode: grid, start: 100, stop: 0, step: 1}", "alignment.stop (0) must be greater than alignment.start (100)"),
    ("{mode: grid, start: 0, stop: .inf, step: 1}", "alignment.stop must be a finite number, got inf"),
    ("{mode: grid, start: .nan, stop: 1, step: 1}", "alignment.start must be a finite number, got nan"),
    ("{mode: grid, start: 0, stop: 1, step: 5}", "has one point"),
    ("{mode: grid, start: 0, stop: 1}", "alignment mode 'grid' needs start, stop and step"),
    ("{mode: overlap, step: 1.0e-12}", "the common axis"),
    ("{mode: overlap, start: 1}", "alignment.start and alignment.stop apply to mode 'grid' only"),
    ("{mode: none, step: 2}", "alignment.step applies to modes 'overlap', 'native' and 'grid' only"),
])
def test_bad_alignment_is_one_line(tmp_path, alignment, message):
    path = card(tmp_path, good("grid", f"alignment: {alignment}\n"))
    assert_one_line_error(invoke(*run_args(path, tmp_path / "r", "-m", "sbc")), message)
    assert no_records(tmp_path / "r")


def test_good_grid_still_works(tmp_path):
    path = card(tmp_path, good("grid", "alignment: {mode: grid, start: 1010, stop: 1390, step: 4}\n"))
    res = invoke(*run_args(path, tmp_path / "r", "-m", "sbc"))
    assert res.exit_code == 0, res.output
    (rec,) = Store(tmp_path / "r").iter_records()
    assert rec["status"] == "ok"


# --- 3. card and suite names --------------------------------------------------------------------


@pytest.mark.parametrize("name, message", [
    ("a" * 300, "task name is 300 characters long, too long: a name starts with a letter or digit"),
    ("..", "task name '..' is not allowed: a name starts with a letter or digit"),
    (".", "task name '.' is not allowed"),
    ("'a/b'", "task name 'a/b' is not allowed"),
    ("'-x'", "task name '-x' is not allowed"),
    ("'a b'", "task name 'a b' is not allowed"),
])
def test_bad_task_name(tmp_path, name, message):
    path = card(tmp_path, good(name))
    assert_one_line_error(invoke(*run_args(path, tmp_path / "r", "-m", "sbc")), path, message)
    assert no_records(tmp_path / "r") and not list(tmp_path.rglob("*.json"))


def test_bad_suite_name(tmp_path):
    path = card(tmp_path, "name: ..\nversion: 1\nkind: suite\ntasks: [synthetic_a_b]\n")
    assert_one_line_error(invoke(*run_args(path, tmp_path / "r", "-m", "sbc")), "suite name '..' is not allowed")


def test_good_names_still_accepted():
    for name in ("a", "corn_m5_mp6", "A1.2+b-c", "9" * 99 + "z"):
        assert parse_card(good(name), "c.yaml").name == name


# --- 4. duplicate keys --------------------------------------------------------------------------


def test_duplicate_keys_are_refused_with_key_and_line(tmp_path):
    path = card(tmp_path, good("dup", "source: synth_b\n"))
    assert_one_line_error(invoke(*run_args(path, tmp_path / "r", "-m", "sbc")),
                          f"{path}: line 7: duplicate key 'source' (first given on line 4); give each key once")
    with pytest.raises(CardError, match=r"line 6: duplicate key 'strategy' \(first given on line 6\)"):
        parse_card(good("dup").replace("strategy: random,", "strategy: random, strategy: kfold,"), "c.yaml")
    with pytest.raises(CardError, match="key 1 must be a string"):
        parse_card(good("k", "loader_options: {1: a}\n"), "c.yaml")
    with pytest.raises(CardError, match="unknown key 1"):
        parse_card(good("k", "1: a\n"), "c.yaml")


# --- 5. standards.subsample ---------------------------------------------------------------------


@pytest.mark.parametrize("value", ["5.0", "-0.5", "0.0", "1", "1.0", ".nan"])
def test_subsample_outside_0_1_is_refused(tmp_path, value):
    path = card(tmp_path, good("sub", f"standards: {{subsample: {value}}}\n"))
    assert_one_line_error(invoke(*run_args(path, tmp_path / "r", "-m", "sbc")),
                          "standards.subsample must be a fraction strictly between 0 and 1")


def test_subsample_wrong_type_and_good_value(tmp_path):
    with pytest.raises(CardError, match="standards: key 'subsample' must be float or int, got bool"):
        parse_card(good("sub", "standards: {subsample: true}\n"), "c.yaml")
    assert parse_card(good("sub", "standards: {subsample: 0.5}\n"), "c.yaml").standards["subsample"] == 0.5


# --- 6. a bad card among good ones --------------------------------------------------------------


def test_listing_shows_good_cards_and_warns_once_per_bad_card(tmp_path, monkeypatch):
    folder = tmp_path / "cards"
    card(folder, good("good_one"), "good_one.yaml")
    card(folder, good("dup", "name: dup\n"), "dup.yaml")
    card(folder, good("bad_grid", "alignment: {mode: grid, start: 0, stop: 1e18, step: 1}\n"), "bad_grid.yaml")
    card(folder, good("other_name"), "mismatch.yaml")
    card(folder, ": : :\n", "broken.yaml")
    monkeypatch.setenv("CTBENCH_TASKS", os.pathsep.join([str(folder), str(tmp_path / "missing")]))
    monkeypatch.setenv("COLUMNS", "300")
    res = invoke("tasks")
    assert res.exit_code == 0, res.output
    assert "good_one" in res.stdout and "synthetic_a_b" in res.stdout and "corn_m5_mp6" in res.stdout
    warnings = res.stderr.strip().splitlines()
    assert len(warnings) == 5 and all(w.startswith("warning: ") for w in warnings), warnings
    assert any("missing does not exist" in w for w in warnings)
    for file, why in (("dup.yaml", "duplicate key 'name'"), ("bad_grid.yaml", "alignment grid"),
                      ("mismatch.yaml", "does not match its file name"), ("broken.yaml", "not valid YAML")):
        assert any(str(folder / file) in w and why in w and w.endswith("card skipped") for w in warnings), (file, warnings)
    assert "Traceback" not in res.output
    # showing the bad card is still an error; running a good card of that folder is not disturbed
    assert_one_line_error(invoke("tasks", "show", "dup"), str(folder / "dup.yaml"), "duplicate key 'name'")
    res = invoke(*run_args("good_one", tmp_path / "r", "-m", "sbc"))
    assert res.exit_code == 0, res.output
    assert len(list(Store(tmp_path / "r").iter_records())) == 1


# --- 7-9. --param ----------------------------------------------------------------------------


def test_param_spellings_of_one_value_give_one_record(tmp_path):
    for value in ("3", "3.0", '"3"', "'3'"):
        res = invoke(*run_args("synthetic_a_b", tmp_path, "-m", "pds", "--param", f"half_window={value}"))
        assert res.exit_code == 0, res.output
    recs = list(Store(tmp_path).iter_records())
    assert len(recs) == 1 and recs[0]["identity"]["params"]["half_window"] == 3


def test_float_params_take_ints_and_exponents(tmp_path):
    from ctbench.params import normalise_params
    from ctbench.plugins import get_method

    cls = get_method("model_update").cls
    assert normalise_params(cls, {"max_weight_ratio": 4}) == {"max_weight_ratio": 4.0}
    assert normalise_params(cls, {"max_weight_ratio": "1e1"}) == {"max_weight_ratio": 10.0}
    assert normalise_params(cls, {"weight": 2, "weights": [1, 2]}) == {"weight": 2, "weights": [1, 2]}  # no fixed type
    assert normalise_params(cls, {"gain_correction": "never", "max_components": None}) == {
        "gain_correction": "never", "max_components": None}


@pytest.mark.parametrize("method, param, message", [
    ("pds", "half_window=abc", "method 'pds': parameter 'half_window' takes an integer, got 'abc'"),
    ("pds", "half_window=3.5", "method 'pds': parameter 'half_window' takes an integer, got 3.5"),
    ("pds", "half_window=true", "method 'pds': parameter 'half_window' takes an integer, got True"),
    ("pds", "half_window=.inf", "takes an integer, got inf"),
    ("cca", "shrink=1", "method 'cca': parameter 'shrink' takes true or false, got 1"),
    ("cca", "shrink=yes please", "takes true or false, got 'yes please'"),
    ("model_update", "max_weight_ratio=big", "parameter 'max_weight_ratio' takes a finite number, got 'big'"),
    ("model_update", "max_weight_ratio=.nan", "takes a finite number, got nan"),
    ("sbc", "random_state=5", "method 'sbc': parameter 'random_state' is set by the runner (each run is seeded from "
                              "--seed); use --seed instead of --param random_state"),
    ("sbc", "mode={a: 1}", "--param mode takes a number, true/false, null, a string or a flat list like [1, 2], got a mapping"),
    ("sbc", "mode=[[1]]", "got a nested list"),
    ("sbc", "mode=*ref", "--param mode: YAML anchors and aliases are not allowed (alias *ref)"),
    ("sbc", "=3", "--param takes key=value, got '=3' (no key)"),
    ("sbc", "mode", "--param takes key=value, got 'mode'"),
])
def test_bad_param_is_one_line_before_anything_runs(tmp_path, method, param, message):
    assert_one_line_error(invoke(*run_args("synthetic_a_b", tmp_path, "-m", method, "--param", param)), message)
    assert no_records(tmp_path)


def test_param_given_twice(tmp_path):
    res = invoke(*run_args("synthetic_a_b", tmp_path, "-m", "pds", "--param", "half_window=1", "--param", "half_window=2"))
    assert_one_line_error(res, "--param half_window is given twice; give each parameter once")


def test_param_text_that_is_not_yaml_stays_a_string(tmp_path):
    from ctbench.cli.common import parse_params

    assert parse_params(["a=[1, 2", "b=1e-3", "c=null", "d=x:y z", "e=2024-01-01", "f=[1, 2.5, x]", "g="]) == {
        "a": "[1, 2", "b": 0.001, "c": None, "d": "x:y z", "e": "2024-01-01", "f": [1, 2.5, "x"], "g": None}


def test_bad_value_in_a_tuned_file_is_one_line(tmp_path):
    """`run --params tuned` normalises (and checks) the tuned values like --param's."""
    from ctbench.tuning import tuned_path

    path = tuned_path(tmp_path, "pds", "synthetic_a_b", 5, 0)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"params": {"half_window": "wide"}, "task_version": load_card("synthetic_a_b").version,
                                "method_version": "x", "outer": 0}))
    from ctbench.plugins import get_method

    doc = json.loads(path.read_text())
    doc["method_version"] = get_method("pds").cls.version
    path.write_text(json.dumps(doc))
    res = invoke("run", "-m", "pds", "-t", "synthetic_a_b", "--shots", "5", "--reps", "1", "--params", "tuned",
                 "--no-mlflow", "--results-dir", str(tmp_path))
    assert res.exit_code == 2, res.output
    assert "error: method 'pds': parameter 'half_window' takes an integer, got 'wide'" in res.stderr
    assert no_records(tmp_path)


# --- bad synthetic loader options (bounded memory) ----------------------------------------------


@pytest.mark.parametrize("options, message", [
    ("{n_samples: 100000000, n_channels: 100000}", "option 'n_samples' must be between 8 and 100000"),
    ("{n_samples: 100000, n_channels: 100000}", "at most 5000000"),
    ("{n_samples: 2.5}", "option 'n_samples' must be an integer, got 2.5"),
    ("{seed: -1}", "option 'seed' must be between 0"),
])
def test_bad_synthetic_options(tmp_path, options, message):
    path = card(tmp_path, good("syn", f"loader_options: {options}\n"))
    assert_one_line_error(invoke(*run_args(path, tmp_path / "r", "-m", "sbc")), message)


def test_self_referencing_loader_options_are_refused():
    from ctbench.data.loaders import load_dataset
    from ctbench.data.spectra import DataError
    from ctbench.plugins import get_loader

    shared = ["x"] * 10
    for _ in range(8):
        shared = [shared] * 10  # 10**9 leaves when written out
    with pytest.raises(DataError, match="more than 100000 values"):
        load_dataset(get_loader("synthetic"), options={"n_samples": shared})
