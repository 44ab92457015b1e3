"""Task cards: YAML files describing a task (or a suite of tasks), validated strictly.

Unknown keys and wrong types are rejected with the key named. Cards are read with a strict YAML
loader (:func:`load_yaml`: no anchors or aliases, no duplicate keys, at most 1 MiB and 20 000
values); task and suite names follow ``NAME_RULE`` (they become folder names of the results).
A card is found by name in the task folders (``CTBENCH_TASKS`` env, the project's ``tasks/``
folder, folders registered by plugins), or given as a path to a ``.yaml`` file.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctbench.data.spectra import DataError


class CardError(ValueError):
    """A task card is malformed; the message names the file and the key."""


# --- strict YAML ---------------------------------------------------------------------------------

MAX_CARD_BYTES = 1024 * 1024
"""A card file larger than this is refused unread (cards are a few hundred bytes)."""
MAX_YAML_NODES = 20_000
"""Most values (scalars, lists, mappings) one YAML document may hold."""
MAX_YAML_DEPTH = 32
"""Deepest nesting of lists and mappings."""
MAX_GRID_POINTS = 100_000
"""Most points an alignment grid may have."""
NAME_RULE = "a name starts with a letter or digit and has at most 100 letters, digits and _ . + -"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}")


class YAMLInputError(ValueError):
    """YAML text that the strict loader refuses (anchors, aliases, duplicate keys, too big)."""


def _yaml_base() -> type:
    import yaml

    return getattr(yaml, "CSafeLoader", None) or yaml.SafeLoader


_STRICT_LOADER: type | None = None


def strict_loader() -> type:
    """A ``yaml.SafeLoader`` (libyaml's when available) that refuses duplicate mapping keys and
    reads YAML 1.2 floats without a dot (``1e-3``, ``1e18``) as numbers. Anchors, aliases and
    size are checked by :func:`load_yaml` on the event stream, before anything is built."""
    global _STRICT_LOADER
    if _STRICT_LOADER is None:
        import yaml

        class StrictLoader(_yaml_base()):  # type: ignore[misc, valid-type]
            def construct_mapping(self, node, deep=False):  # noqa: ANN001
                if isinstance(node, yaml.MappingNode):
                    seen: dict[Any, int] = {}
                    for key_node, _ in node.value:
                        if key_node.tag == "tag:yaml.org,2002:merge":
                            continue
                        key = self.construct_object(key_node, deep=True)
                        line = key_node.start_mark.line + 1
                        try:
                            if key in seen:
                                raise YAMLInputError(
                                    f"line {line}: duplicate key {key!r} (first given on line {seen[key]}); "
                                    f"give each key once"
                                )
                            seen[key] = line
                        except TypeError:  # an unhashable key: the base class reports it
                            continue
                return super().construct_mapping(node, deep=deep)

        StrictLoader.add_implicit_resolver(
            "tag:yaml.org,2002:float",
            re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
            list("-+0123456789"),
        )
        _STRICT_LOADER = StrictLoader
    return _STRICT_LOADER


def load_yaml(text: str) -> Any:
    """Parse one YAML document strictly: no anchors or aliases (``&a``, ``*a``: a card has no use
    for them, and nested aliases expand exponentially), no duplicate keys, at most
    ``MAX_YAML_NODES`` values nested at most ``MAX_YAML_DEPTH`` deep. Raises
    :class:`YAMLInputError` (refused) or ``yaml.YAMLError`` (not valid YAML)."""
    import yaml

    loader_cls = strict_loader()
    depth = nodes = 0
    events = yaml.parse(text, Loader=_yaml_base())
    for event in events:
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            what = f"alias *{event.anchor}" if isinstance(event, yaml.AliasEvent) else f"anchor &{event.anchor}"
            raise YAMLInputError(
                f"line {event.start_mark.line + 1}: YAML anchors and aliases are not allowed ({what}); "
                f"write the value out (quote it if it is a string starting with & or *)"
            )
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise YAMLInputError(f"line {event.start_mark.line + 1}: nested more than {MAX_YAML_DEPTH} levels deep")
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1
        if isinstance(event, yaml.NodeEvent):
            nodes += 1
            if nodes > MAX_YAML_NODES:
                raise YAMLInputError(f"line {event.start_mark.line + 1}: more than {MAX_YAML_NODES} values")
    loader = loader_cls(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def yaml_problem(exc: Exception) -> str:
    """One line describing a YAML syntax error (the problem and its line)."""
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if problem and mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def check_name(name: Any, where: str, what: str = "card") -> None:
    if isinstance(name, str) and len(name) > 100:
        raise CardError(f"{where}: {what} name is {len(name)} characters long, too long: {NAME_RULE}")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        shown = repr(name) if len(repr(name)) <= 60 else repr(name)[:57] + "...'"
        raise CardError(f"{where}: {what} name {shown} is not allowed: {NAME_RULE}")


def grid_points(start: float, stop: float, step: float) -> float:
    """Number of points of the grid start, start + step, ... <= stop (inf when it overflows)."""
    q = (float(stop) - float(start)) / float(step)
    return math.floor(q + 1e-9) + 1 if math.isfinite(q) else math.inf


# key -> (accepted types, required, default)
_TASK_SCHEMA: dict[str, tuple[tuple[type, ...], bool, Any]] = {
    "name": ((str,), True, None),
    "version": ((str, int), True, None),
    "kind": ((str,), False, "task"),
    "description": ((str,), False, ""),
    "dataset": ((str,), True, None),
    "loader_options": ((dict,), False, {}),
    "source": ((str, int), True, None),
    "target": ((str, int), True, None),
    "properties": ((list,), False, None),
    "test": ((dict,), True, None),
    "standards": ((dict,), False, {}),
    "alignment": ((dict,), False, {}),
    "shots": ((list,), False, [5, 10, 20, 30, 50]),
    "synthetic": ((bool,), False, False),
}
_TEST_SCHEMA = {
    "strategy": ((str,), True, None),
    "folds": ((int,), False, 5),
    "fraction": ((float, int), False, 0.25),
    "seed": ((int,), False, 0),
    "meta_key": ((str,), False, "sample_type"),
    "test_values": ((list,), False, ["Test"]),
    "pool_values": ((list,), False, None),
}
_STANDARDS_SCHEMA = {
    "strategy": ((str,), False, "kennard_stone"),
    "subsample": ((float, int), False, 0.8),
}
_ALIGNMENT_SCHEMA = {
    "mode": ((str,), False, "none"),
    "step": ((float, int), False, None),
    "start": ((float, int), False, None),
    "stop": ((float, int), False, None),
}
_SUITE_SCHEMA = {
    "name": ((str,), True, None),
    "version": ((str, int), True, None),
    "kind": ((str,), True, None),
    "description": ((str,), False, ""),
    "tasks": ((list,), True, None),
    "shots": ((list,), False, None),
}

TEST_STRATEGIES = ("kfold", "random", "official")
STANDARD_STRATEGIES = ("kennard_stone", "random")
ALIGNMENT_MODES = ("none", "overlap", "grid", "native")
"""``native``: methods tagged ``native_axes`` get each instrument's own axis; every other method
gets the overlap grid, as with ``overlap``."""


def _validate(data: dict[str, Any], schema: dict, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise CardError(f"{where}: expected a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - set(schema), key=repr)
    if unknown:
        from ctbench.names import did_you_mean

        raise CardError(f"{where}: unknown key {unknown[0]!r}{did_you_mean(str(unknown[0]), schema)}")
    out: dict[str, Any] = {}
    for key, (types, required, default) in schema.items():
        if key not in data or data[key] is None:
            if required:
                raise CardError(f"{where}: missing required key {key!r}")
            out[key] = default
            continue
        value = data[key]
        if isinstance(value, bool) and bool not in types:
            raise CardError(f"{where}: key {key!r} must be {' or '.join(t.__name__ for t in types)}, got bool")
        if not isinstance(value, types):
            raise CardError(
                f"{where}: key {key!r} must be {' or '.join(t.__name__ for t in types)}, got {type(value).__name__}"
            )
        out[key] = value
    return out


@dataclass(frozen=True)
class TaskCard:
    name: str
    version: str
    dataset: str
    source: str
    target: str
    test: dict[str, Any]
    standards: dict[str, Any]
    alignment: dict[str, Any]
    properties: tuple[str, ...] | None = None
    loader_options: dict[str, Any] = field(default_factory=dict)
    shots: tuple[int, ...] = (5, 10, 20, 30, 50)
    description: str = ""
    synthetic: bool = False
    path: str = ""
    sha256: str = ""


@dataclass(frozen=True)
class SuiteCard:
    name: str
    version: str
    tasks: tuple[str, ...]
    shots: tuple[int, ...] | None = None
    description: str = ""
    path: str = ""


def parse_card(text: str, where: str) -> TaskCard | SuiteCard:
    """Parse and validate one card's YAML text (``where`` names it in errors)."""
    import yaml

    if len(text) > MAX_CARD_BYTES:
        raise CardError(f"{where}: a card is at most {MAX_CARD_BYTES // 1024} KiB, this one has {len(text)} characters")
    try:
        data = load_yaml(text)
    except YAMLInputError as exc:
        raise CardError(f"{where}: {exc}") from None
    except yaml.YAMLError as exc:
        raise CardError(f"{where}: not valid YAML ({yaml_problem(exc)})") from None
    except RecursionError:
        raise CardError(f"{where}: not valid YAML (nested too deeply)") from None
    sha = hashlib.sha256(text.encode()).hexdigest()
    if isinstance(data, dict) and data.get("kind") == "suite":
        d = _validate(data, _SUITE_SCHEMA, where)
        check_name(d["name"], where, "suite")
        if not all(isinstance(t, str) and t for t in d["tasks"]):
            raise CardError(f"{where}: key 'tasks' must be a list of task names")
        return SuiteCard(
            name=d["name"],
            version=str(d["version"]),
            tasks=tuple(d["tasks"]),
            shots=_int_list(d["shots"], "shots", where) if d["shots"] is not None else None,
            description=d["description"],
            path=where,
        )
    _check_misplaced_loader_keys(data, where)
    d = _validate(data, _TASK_SCHEMA, where)
    if d["kind"] != "task":
        raise CardError(f"{where}: key 'kind' must be 'task' or 'suite', got {d['kind']!r}")
    check_name(d["name"], where, "task")
    _check_option_keys(d["loader_options"], f"{where}: loader_options")
    test = _validate(d["test"], _TEST_SCHEMA, f"{where}: test")
    if test["strategy"] not in TEST_STRATEGIES:
        raise CardError(f"{where}: test.strategy must be one of {TEST_STRATEGIES}, got {test['strategy']!r}")
    if not 0 < float(test["fraction"]) < 1:
        raise CardError(f"{where}: test.fraction must be between 0 and 1")
    if not 2 <= test["folds"] <= 50:
        raise CardError(f"{where}: test.folds must be an integer between 2 and 50, got {test['folds']}")
    standards = _validate(d["standards"], _STANDARDS_SCHEMA, f"{where}: standards")
    if standards["strategy"] not in STANDARD_STRATEGIES:
        raise CardError(
            f"{where}: standards.strategy must be one of {STANDARD_STRATEGIES}, got {standards['strategy']!r}"
        )
    if not 0 < standards["subsample"] < 1:  # NaN fails too
        raise CardError(
            f"{where}: standards.subsample must be a fraction strictly between 0 and 1 (the share of the pool each "
            f"later Kennard-Stone draw runs on; 1 would repeat the first draw), got {standards['subsample']!r}"
        )
    alignment = _check_alignment(_validate(d["alignment"], _ALIGNMENT_SCHEMA, f"{where}: alignment"), where)
    props = d["properties"]
    if props is not None and not all(isinstance(p, str) for p in props):
        raise CardError(f"{where}: key 'properties' must be a list of names")
    return TaskCard(
        name=d["name"],
        version=str(d["version"]),
        dataset=d["dataset"],
        source=str(d["source"]),
        target=str(d["target"]),
        test=test,
        standards=standards,
        alignment=alignment,
        properties=tuple(props) if props is not None else None,
        loader_options=d["loader_options"],
        shots=_int_list(d["shots"], "shots", where),
        description=d["description"],
        synthetic=d["synthetic"],
        path=where,
        sha256=sha,
    )


def _check_misplaced_loader_keys(data: Any, where: str) -> None:
    """A loader option (``files:``, ``id_column:``, ...) written at the card's top level: say
    where it belongs instead of only that the key is unknown."""
    if not isinstance(data, dict):
        return
    misplaced = [k for k in data if isinstance(k, str) and k not in _TASK_SCHEMA]
    if not misplaced:
        return
    from ctbench.data.loaders import CSV_OPTIONS, MAT_OPTIONS

    loader_keys = set(CSV_OPTIONS) | set(MAT_OPTIONS) | {"keep_outliers", "n_samples", "n_channels"}
    for key in misplaced:
        if key in loader_keys:
            raise CardError(
                f"{where}: unknown key {key!r}: {key!r} is a loader option and belongs under 'loader_options:' "
                f"(indented below it, e.g. loader_options: {{{key}: ...}}); see docs/your-data.md"
            )


def _check_alignment(alignment: dict[str, Any], where: str) -> dict[str, Any]:
    mode = alignment["mode"]
    if mode not in ALIGNMENT_MODES:
        raise CardError(f"{where}: alignment.mode must be one of {ALIGNMENT_MODES}, got {mode!r}")
    for key in ("start", "stop", "step"):
        value = alignment[key]
        if value is not None and not math.isfinite(value):
            raise CardError(f"{where}: alignment.{key} must be a finite number, got {value!r}")
    if mode != "grid" and (alignment["start"] is not None or alignment["stop"] is not None):
        raise CardError(f"{where}: alignment.start and alignment.stop apply to mode 'grid' only (mode is {mode!r})")
    if mode == "none" and alignment["step"] is not None:
        raise CardError(f"{where}: alignment.step applies to modes 'overlap', 'native' and 'grid' only (mode is 'none')")
    step = alignment["step"]
    if step is not None and not step > 0:
        raise CardError(f"{where}: alignment.step must be positive, got {step!r}")
    if mode == "grid":
        start, stop = alignment["start"], alignment["stop"]
        if None in (start, stop, step):
            raise CardError(f"{where}: alignment mode 'grid' needs start, stop and step")
        if not stop > start:
            raise CardError(f"{where}: alignment.stop ({stop!r}) must be greater than alignment.start ({start!r})")
        n = grid_points(start, stop, step)
        if n > MAX_GRID_POINTS:
            raise CardError(
                f"{where}: the alignment grid {start:g}..{stop:g} step {step:g} has {n:.3g} points, at most "
                f"{MAX_GRID_POINTS} are allowed; use a larger step"
            )
        if n < 2:
            raise CardError(f"{where}: the alignment grid {start:g}..{stop:g} step {step:g} has one point; use a smaller step")
    return alignment


def _check_option_keys(value: Any, where: str) -> None:
    """Loader options are plain data: every mapping key a string."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            for k, item in v.items():
                if not isinstance(k, str):
                    raise CardError(f"{where}: key {k!r} must be a string (quote it)")
                stack.append(item)
        elif isinstance(v, list):
            stack.extend(v)


def _int_list(values: list, key: str, where: str) -> tuple[int, ...]:
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise CardError(f"{where}: key {key!r} must be a list of non-negative integers")
    return tuple(values)


def task_dirs() -> list[Path]:
    """Folders searched for cards, in order."""
    dirs: list[Path] = []
    env = os.environ.get("CTBENCH_TASKS")
    if env:
        dirs += [Path(p) for p in env.split(os.pathsep) if p]
    project_tasks = Path(__file__).resolve().parent.parent / "tasks"
    if project_tasks.is_dir():
        dirs.append(project_tasks)
    from ctbench.plugins import load_task_dirs

    dirs += load_task_dirs()
    return dirs


def _card_files() -> dict[str, Path]:
    """Card name -> file, first folder wins (file stem is the card's name)."""
    found: dict[str, Path] = {}
    for d in task_dirs():
        for path in sorted(d.rglob("*.yaml")):
            try:
                if path.is_dir():  # a folder named like a card
                    continue
            except OSError:
                pass
            found.setdefault(path.stem, path)
    return found


def all_card_names() -> list[str]:
    return sorted(_card_files())


def load_card(name_or_path: str) -> TaskCard | SuiteCard:
    """A card by name (searched in the task folders) or by path to a YAML file."""
    from ctbench.names import did_you_mean
    from ctbench.plugins import UnknownName

    path = Path(name_or_path)
    if name_or_path.endswith((".yaml", ".yml")):
        try:
            is_file = path.is_file()
        except OSError as exc:  # a name too long for the file system, ...
            raise CardError(f"task card file {name_or_path[:200]!r}: {exc.strerror or type(exc).__name__}") from None
        if not is_file:
            raise CardError(f"task card file not found: {name_or_path}" + (" (it is a folder)" if path.is_dir() else ""))
    else:
        files = _card_files()
        if name_or_path not in files:
            raise UnknownName(
                f"unknown task {name_or_path!r}{did_you_mean(name_or_path, files)}; "
                f"`ctbench tasks` lists them, or pass a path to a .yaml card"
            )
        path = files[name_or_path]
    card = parse_card(read_card_text(path), str(path))
    if not name_or_path.endswith((".yaml", ".yml")) and card.name != name_or_path:
        raise CardError(f"{path}: card name {card.name!r} does not match its file name {path.stem!r}")
    return card


def read_card_text(path: Path) -> str:
    """A card file's text, refusing (one-line CardError) what is too big, unreadable or not UTF-8."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CARD_BYTES + 1)
    except OSError as exc:
        raise CardError(f"{path}: cannot read the card ({exc.strerror or type(exc).__name__})") from None
    if len(data) > MAX_CARD_BYTES:
        raise CardError(f"{path}: a card is at most {MAX_CARD_BYTES // 1024} KiB; this file is larger")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CardError(f"{path}: a card must be UTF-8 text (byte {exc.start} is not)") from None


def expand_tasks(names: list[str]) -> list[tuple[TaskCard, bool, tuple[int, ...] | None]]:
    """Task names or suites -> [(task card, named explicitly, suite shots)], without duplicates."""
    out: list[tuple[TaskCard, bool, tuple[int, ...] | None]] = []
    seen: set[str] = set()

    def add(card_name: str, explicit: bool, shots: tuple[int, ...] | None, depth: int) -> None:
        if depth > 5:
            raise CardError(f"suite nesting too deep at {card_name!r}")
        card = load_card(card_name)
        if isinstance(card, SuiteCard):
            for t in card.tasks:
                add(t, False, card.shots or shots, depth + 1)
        elif card.name not in seen:
            seen.add(card.name)
            out.append((card, explicit, shots))

    for n in names:
        add(n, True, None, 0)
    if not out:
        raise DataError("no tasks selected")
    return out
