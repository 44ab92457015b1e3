"""`ctbench tasks new NAME --file A=a.csv --file B=b.csv [...]`: write a task card from data files.

It reads the files, infers what it can (separator, sample-id column, axis and its unit,
properties, pairing, alignment; see :mod:`ctbench.cardgen`), asks for the rest on a terminal
(else the missing flag is a one-line error), prints what it found, checks the card by building
the task, and only then writes it. docs/your-data.md walks through it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer

from ctbench.cli.common import fail, friendly_errors, split_list

NEXT_METHODS = "no_transfer,target_only,full_recalibration,sbc,model_update,pds"


def tasks_new(
    name: str = typer.Argument(..., help="Name of the new task: also the card's file name (NAME.yaml)."),
    file: Optional[list[str]] = typer.Option(None, "--file", help="INSTRUMENT=PATH: one instrument's CSV file (give one per instrument, at least two)."),
    references: Optional[Path] = typer.Option(None, "--references", help="A CSV file of reference values joined to the spectra by sample id."),
    source: Optional[str] = typer.Option(None, "--source", help="Source instrument (default with two files: the first --file)."),
    target: Optional[str] = typer.Option(None, "--target", help="Target instrument (default with two files: the second --file)."),
    properties: Optional[str] = typer.Option(None, "--properties", help="Reference columns to predict, comma-separated (default: the numeric non-spectral columns)."),
    id_column: Optional[str] = typer.Option(None, "--id-column", help="Sample-id column of the instrument files ('' = the blank-headed first column)."),
    references_id_column: Optional[str] = typer.Option(None, "--references-id-column", help="Sample-id column of the references file (default: as --id-column)."),
    axis_unit: Optional[str] = typer.Option(None, "--axis-unit", help="nm or cm-1 (default: guessed from the axis)."),
    sep: Optional[str] = typer.Option(None, "--sep", help="Column separator: ',', ';', tab or whitespace (default: detected per file)."),
    decimal: Optional[str] = typer.Option(None, "--decimal", help="Decimal mark: '.' or ',' (default: detected)."),
    test: str = typer.Option("kfold", "--test", help="Test strategy: kfold, random or official."),
    folds: int = typer.Option(5, "--folds", help="kfold: number of grouped outer folds (2-50)."),
    fraction: float = typer.Option(0.25, "--fraction", help="random: share of the samples in the test set."),
    seed: int = typer.Option(0, "--seed", help="Seed of the outer split."),
    meta_key: Optional[str] = typer.Option(None, "--meta-key", help="official: the column naming each row's set (default: a column holding 'Test')."),
    test_values: Optional[str] = typer.Option(None, "--test-values", help="official: values of --meta-key that mark test rows, comma-separated."),
    pool_values: Optional[str] = typer.Option(None, "--pool-values", help="official: values that mark calibration rows (default: every other row)."),
    alignment: Optional[str] = typer.Option(None, "--alignment", help="none, overlap, grid or native (default: none when both instruments share the axis, else overlap)."),
    step: Optional[float] = typer.Option(None, "--step", help="Step of the common grid (overlap, native, grid)."),
    start: Optional[float] = typer.Option(None, "--start", help="grid: first point."),
    stop: Optional[float] = typer.Option(None, "--stop", help="grid: last point."),
    shots: Optional[str] = typer.Option(None, "--shots", help="Shot grid, comma-separated (default: 5,10,20,30,50 below the smallest calibration pool)."),
    standards: str = typer.Option("kennard_stone", "--standards", help="How transfer standards are chosen: kennard_stone or random."),
    description: Optional[str] = typer.Option(None, "--description", help="One line describing the task."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Card file or folder (default: the first $CTBENCH_TASKS folder, else the current folder)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing card file."),
    no_input: bool = typer.Option(False, "--no-input", help="Never ask: what cannot be inferred is an error naming its flag."),
) -> None:
    """Write a task card from your CSV files, check it by building the task, and say what to run next."""
    with friendly_errors():
        _tasks_new(**locals())


def _tasks_new(**a: Any) -> None:
    from ctbench import cardgen
    from ctbench.cards import check_name, load_card, parse_card
    from ctbench.data.loaders import read_csv_dataset

    name = a["name"]
    check_name(name, "tasks new", "task")
    interactive = _is_interactive() and not a["no_input"]
    out = _out_path(name, a["out"])
    if out.exists() and not a["force"]:
        fail(f"{out} already exists; pass --force to overwrite it, or choose another --out or NAME")
    card_dir = out.parent.resolve()

    files = _parse_files(a["file"] or [])
    sep, decimal = a["sep"] or "auto", a["decimal"] or "auto"
    infos = {inst: cardgen.inspect_file(p, f"instrument {inst!r}", sep, decimal) for inst, p in files.items()}
    for inst, info in infos.items():
        if info.axis is None:
            from ctbench.data.loaders import _unit_header_hint

            fail(f"{info.path}: no spectral columns (no column header parses as a number){_unit_header_hint(info.columns)}")
    refs = None
    if a["references"] is not None:
        refs = cardgen.inspect_file(a["references"], "references", sep, decimal)

    # sample ids
    id_col, id_why = (a["id_column"].strip(), "given") if a["id_column"] is not None else cardgen.infer_id_column(infos)
    if id_col is None:
        counts = {inst: i.rows for inst, i in infos.items()}
        if refs is not None or len(set(counts.values())) > 1:
            why = ("a references file is joined by sample id" if refs is not None
                   else f"the files have different row counts ({', '.join(f'{k}: {v}' for k, v in counts.items())})")
            first = next(iter(infos.values()))
            choices = [c for c in first.columns if c in first.text or c in first.numeric]
            id_col = _ask(cardgen.NeedInput(
                f"cannot tell which column holds the sample ids, and {why}; give --id-column "
                f"(columns: {', '.join(choices[:12]) or '(none)'})", "--id-column", choices), interactive)
            id_why = "given"
    ref_id, ref_why = None, ""
    if refs is not None:
        if a["references_id_column"] is not None:
            ref_id, ref_why = a["references_id_column"].strip(), "given"
        else:
            try:
                ref_id, ref_why = cardgen.infer_references_id(refs, id_col)
            except cardgen.NeedInput as exc:
                ref_id, ref_why = _ask(exc, interactive), "given"

    # axis unit
    if a["axis_unit"] is not None:
        unit, unit_why = a["axis_unit"], "given"
    else:
        unit, unit_why = cardgen.infer_unit(infos)
        if unit is None:
            unit = _ask(cardgen.NeedInput(f"cannot tell the axis unit: {unit_why}; give --axis-unit nm or --axis-unit cm-1",
                                          "--axis-unit", ["nm", "cm-1"]), interactive)
            unit_why = "given"
    if unit not in ("nm", "cm-1"):
        fail(f"--axis-unit takes nm or cm-1, got {unit!r}")

    # properties
    notes: list[str] = []
    if a["properties"] is not None:
        props = split_list(a["properties"])
        if not props:
            fail("--properties needs at least one column name")
    else:
        props, notes = cardgen.infer_properties(infos, refs, id_col, ref_id)
        if not props:
            pool = refs if refs is not None else next(iter(infos.values()))
            cands = [c for c in pool.numeric]
            answer = _ask(cardgen.NeedInput(
                f"found no numeric reference column in {pool.path}; give --properties (comma-separated; numeric "
                f"columns: {', '.join(cands) or '(none)'})", "--properties", cands), interactive)
            props = split_list(answer)

    # source / target
    names = list(infos)
    src, tgt = a["source"], a["target"]
    by_order = False
    if src is None or tgt is None:
        if len(names) == 2 and src is None and tgt is None:
            src, tgt = names
            by_order = True
        else:
            have = f"{len(names)} instruments ({', '.join(names)})"
            if src is None:
                left = [n for n in names if n != tgt]
                src = _ask(cardgen.NeedInput(f"{have}: give --source", "--source", left), interactive)
            if tgt is None:
                left = [n for n in names if n != src]
                tgt = _ask(cardgen.NeedInput(f"{have}: give --target", "--target", left), interactive)
    for flag, inst in (("--source", src), ("--target", tgt)):
        if inst not in infos:
            from ctbench.names import did_you_mean

            fail(f"{flag} {inst!r} is not one of the instruments given with --file ({', '.join(names)})"
                 f"{did_you_mean(str(inst), names)}")
    if src == tgt:
        fail(f"--source and --target are the same instrument ({src!r})")

    # the loader's options, and what they load to
    opts: dict[str, Any] = {"files": {inst: cardgen.card_path_value(p, card_dir) for inst, p in files.items()}}
    if refs is not None:
        opts["references"] = cardgen.card_path_value(refs.path, card_dir)
    if id_col is not None:
        opts["id_column"] = id_col
    if ref_id is not None:
        opts["references_id_column"] = ref_id
    opts["properties"] = props
    opts["axis_unit"] = unit
    if a["sep"] is not None:
        opts["sep"] = a["sep"]
    if a["decimal"] is not None:
        opts["decimal"] = a["decimal"]
    dataset, report = read_csv_dataset({**opts, "base_dir": str(card_dir)})
    s_spec, t_spec = dataset.instrument(src), dataset.instrument(tgt)
    n_paired, rows_paired = cardgen.paired_counts(s_spec, t_spec)

    # alignment
    sa, ta = s_spec.axis, t_spec.axis
    same_axis = sa.shape == ta.shape and bool((abs(sa - ta) <= 1e-9 * (1 + abs(sa))).all())
    mode = a["alignment"] or ("none" if same_axis else "overlap")
    align: dict[str, Any] = {"mode": mode}
    for key in ("step", "start", "stop"):
        if a[key] is not None:
            align[key] = a[key]
    meaning = {
        "none": "no resampling: the instruments share the axis",
        "overlap": "both resampled (linearly) onto one grid over their overlap",
        "grid": "both resampled (linearly) onto the grid --start..--stop, --step",
        "native": "methods tagged for native axes get each instrument's own axis, the others the overlap grid",
    }.get(mode, "")
    align_why = ("given; " if a["alignment"] else "") + meaning
    if not a["alignment"] and not same_axis:
        align_why = "the instruments' axes differ: " + meaning

    # test split
    split_hint = cardgen.official_split_hint(infos, refs)
    strategy = a["test"]
    tst: dict[str, Any] = {"strategy": strategy}
    if strategy == "kfold":
        tst["folds"] = a["folds"]
    elif strategy == "random":
        tst["fraction"] = a["fraction"]
    elif strategy == "official":
        key = a["meta_key"] or (split_hint[0] if split_hint else None)
        if key is None:
            key = _ask(cardgen.NeedInput("--test official needs the column that names each row's set; give --meta-key",
                                         "--meta-key", []), interactive)
        tst["meta_key"] = key
        if a["test_values"]:
            tst["test_values"] = split_list(a["test_values"])
        else:
            tst["test_values"] = split_hint[1] if split_hint and split_hint[0] == key else ["Test"]
        if a["pool_values"]:
            tst["pool_values"] = split_list(a["pool_values"])
    else:
        fail(f"--test takes kfold, random or official, got {strategy!r}")
    tst["seed"] = a["seed"]

    desc = a["description"] or (
        f"User data ({', '.join(props)}): source {src} ({Path(files[src]).name}), target {tgt} ({Path(files[tgt]).name})"
        + (f", references {refs.path.name}" if refs is not None else "") + "; written by ctbench tasks new.")
    user_shots = None
    if a["shots"] is not None:
        from ctbench.cli.common import int_list

        user_shots = int_list(a["shots"], "--shots")
    spec = cardgen.CardSpec(name=name, description=desc, source=src, target=tgt, properties=props,
                            loader_options=opts, test=tst, alignment=align, shots=list(user_shots or cardgen.DEFAULT_SHOTS),
                            standards=a["standards"])
    task = _check(spec, out, parse_card)
    min_pool = min(task.outer(k).n_pool_samples for k in range(task.n_outer))
    if user_shots is None and spec.shots != cardgen.default_shots(min_pool):
        spec.shots = cardgen.default_shots(min_pool)
        task = _check(spec, out, parse_card)
    elif user_shots is not None and max(user_shots) > min_pool:
        fail(f"--shots {max(user_shots)} is more than the smallest calibration pool ({min_pool} samples)")

    # what was found
    echo = typer.echo
    echo(f"files ({len(infos)} instrument(s){' and a references file' if refs else ''}):")
    for inst, info in infos.items():
        lay = info.layout
        idc = report.id_columns.get(inst)
        echo(f"  {inst}: {info.path} - {info.describe_layout()}, {info.rows} rows, "
             f"{info.spectral} points {info.axis[0]:g}-{info.axis[-1]:g} {unit}"
             + (f" (step {_step(info.axis)})" if info.spectral > 2 else "")
             + (f", ids in {_id_label(idc, lay)}" if idc else ""))
    if refs is not None:
        echo(f"  references: {refs.path} - {refs.describe_layout()}, {refs.rows} rows, ids in "
             f"{_id_label(report.id_columns.get('references'), refs.layout)}"
             + ("" if ref_why in ("", "given") else f" ({ref_why})"))
    if id_col is None:
        echo("sample ids: none: rows are paired by position (row i is the same sample in every file; "
             "--id-column to name one)")
    else:
        label = _id_label(report.id_columns.get(src), infos[src].layout)
        echo(f"sample ids: {label}" + ("" if id_why in ("", "given") else f" ({id_why})") + "; rows are paired by them")
    echo(f"axis unit: {unit} ({unit_why}{'' if a['axis_unit'] else '; --axis-unit to change'})")
    where = "the references file" if refs is not None else "the instrument files"
    from_refs = [p for p in props if report.properties_from.get(p) == "references"]
    if a["properties"] is None:
        echo(f"properties: {', '.join(props)} (numeric columns of {where}; --properties to change)")
    else:
        echo(f"properties: {', '.join(props)}" + (f"; from the references file: {', '.join(from_refs) or '(none)'}"
                                                   if refs is not None else ""))
    for note in notes:
        echo(f"  note: {note}")
    echo(f"source -> target: {src} -> {tgt}" + (" (the order of --file; --source/--target to change)" if by_order else ""))
    echo(f"paired samples: {n_paired} measured on both ({rows_paired} paired rows; "
         f"{src}: {s_spec.n} rows, {tgt}: {t_spec.n} rows)")
    missing = cardgen.missing_per_property(s_spec, t_spec)
    if any(missing.values()):
        echo("missing references (left out of that property only): "
             + ", ".join(f"{p} {n} of {n_paired}" for p, n in missing.items()))
    else:
        echo("missing references: none")
    if refs is not None:
        echo(f"references file: {report.reference_rows} rows, {report.unmatched_references} match no spectrum (ignored); "
             + ", ".join(f"{inst}: {n} spectra without a reference row" for inst, n in report.without_reference.items()))
    echo(f"alignment: {mode} ({align_why})")
    echo(f"test: {_describe_test(tst)}")
    if split_hint and strategy != "official":
        values = ", ".join(split_hint[1] + split_hint[2])
        echo(f"  note: column {split_hint[0]!r} looks like a given split (values {values}); "
             f"--test official --meta-key {split_hint[0]} uses it")
    echo(f"shots: {', '.join(str(n) for n in spec.shots)} (smallest calibration pool: {min_pool} samples)")

    # write, then read back
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(spec.text())
    card = load_card(str(out))
    from ctbench.tasks import build_task

    task = build_task(card)
    echo(f"wrote {out}")
    echo("# loaded:")
    for k, v in task.summary().items():
        echo(f"  {k}: {v}")
    ref = _task_ref(name, out)
    echo("next:")
    echo(f"  ctbench tasks show {ref}")
    echo(f"  ctbench run -t {ref} -m {NEXT_METHODS} --reps 5")
    echo(f"  ctbench leaderboard -t {name}")
    echo(f"  ctbench report -t {name} --out report")
    if ref != name:
        echo(f"  (to refer to it by name: export CTBENCH_TASKS={out.parent.resolve()})")


def _check(spec: Any, out: Path, parse_card: Any) -> Any:
    """Parse the card's text and build its task, before anything is written."""
    from ctbench.cards import CardError
    from ctbench.data.spectra import DataError
    from ctbench.tasks import build_task

    text = spec.text()
    try:
        return build_task(parse_card(text, str(out)))
    except (CardError, DataError) as exc:
        msg = (str(exc).splitlines() or [type(exc).__name__])[0]
        fail(f"{msg} (no card written)")


def _out_path(name: str, out: Optional[Path]) -> Path:
    from ctbench.cardgen import default_out

    if out is None:
        return default_out(name)
    if out.is_dir() or out.suffix == "":
        return out / f"{name}.yaml"  # a folder (made if missing)
    if out.suffix not in (".yaml", ".yml"):
        fail(f"--out {out}: a card file ends in .yaml (or give a folder)")
    if out.stem != name:
        fail(f"--out {out}: the card's file must be named {name}{out.suffix} (cards are found by file name)")
    return out


def _parse_files(items: list[str]) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for item in items:
        inst, sep, path = item.partition("=")
        if not sep:
            inst, path = Path(item).stem, item
        inst, path = inst.strip(), path.strip()
        if not inst or not path:
            fail(f"--file takes INSTRUMENT=PATH, got {item!r}")
        if inst in files:
            fail(f"--file: instrument {inst!r} is given twice")
        p = Path(path).expanduser()
        if not p.is_file():
            fail(f"--file {inst}={path}: file not found")
        files[inst] = p
    if len(files) < 2:
        fail("give each instrument's file with --file INSTRUMENT=PATH (at least two instruments)")
    return files


def _is_interactive() -> bool:
    return sys.stdin.isatty()


def _ask(exc: Any, interactive: bool) -> str:
    """Ask on a terminal for what could not be inferred; else the one-line error naming the flag."""
    if not interactive:
        fail(str(exc))
    typer.echo(str(exc), err=True)
    shown = f" [{', '.join(exc.choices[:12])}]" if exc.choices else ""
    return str(typer.prompt(f"{exc.flag.lstrip('-')}{shown}")).strip()


def _id_label(column: Optional[str], layout: Any) -> str:
    if column is None:
        return "(none)"
    if column in layout.names and layout.blank[layout.names.index(column)]:
        return "the blank-headed first column"
    return f"column {column!r}"


def _step(axis: Any) -> str:
    import numpy as np

    d = np.diff(axis)
    lo, hi = float(d.min()), float(d.max())
    return f"{lo:g}" if abs(hi - lo) <= 1e-6 * max(1.0, abs(hi)) else f"{lo:g}-{hi:g}, irregular"


def _describe_test(t: dict[str, Any]) -> str:
    if t["strategy"] == "kfold":
        return f"kfold, {t['folds']} grouped outer folds, seed {t['seed']}"
    if t["strategy"] == "random":
        return f"random, {t['fraction']:g} of the samples in the test set, seed {t['seed']}"
    return (f"official, rows whose {t['meta_key']!r} is {', '.join(map(str, t['test_values']))}"
            + (f"; pool: {', '.join(map(str, t['pool_values']))}" if t.get("pool_values") else ""))


def _task_ref(name: str, out: Path) -> str:
    """The card's name when the task folders find this file by it, else its path."""
    from ctbench.cards import load_card

    try:
        found = load_card(name)
        if Path(found.path).resolve() == out.resolve():
            return name
    except Exception:  # not found by name, or another card of that name is broken: use the path
        pass
    return str(out)
