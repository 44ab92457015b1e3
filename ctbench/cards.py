"""Task cards: YAML files describing a task (or a suite of tasks), validated strictly.

Unknown keys and wrong types are rejected with the key named. A card is found by name in the
task folders (``CTBENCH_TASKS`` env, the project's ``tasks/`` folder, folders registered by
plugins), or given as a path to a ``.yaml`` file.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctbench.data.spectra import DataError


class CardError(ValueError):
    """A task card is malformed; the message names the file and the key."""


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
    "subsample": ((float,), False, 0.8),
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
ALIGNMENT_MODES = ("none", "overlap", "grid")


def _validate(data: dict[str, Any], schema: dict, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise CardError(f"{where}: expected a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - set(schema))
    if unknown:
        from ctbench.names import did_you_mean

        raise CardError(f"{where}: unknown key {unknown[0]!r}{did_you_mean(unknown[0], schema)}")
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

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CardError(f"{where}: not valid YAML ({str(exc).splitlines()[0]})") from None
    sha = hashlib.sha256(text.encode()).hexdigest()
    if isinstance(data, dict) and data.get("kind") == "suite":
        d = _validate(data, _SUITE_SCHEMA, where)
        if not all(isinstance(t, str) for t in d["tasks"]):
            raise CardError(f"{where}: key 'tasks' must be a list of task names")
        return SuiteCard(
            name=d["name"],
            version=str(d["version"]),
            tasks=tuple(d["tasks"]),
            shots=_int_list(d["shots"], "shots", where) if d["shots"] is not None else None,
            description=d["description"],
            path=where,
        )
    d = _validate(data, _TASK_SCHEMA, where)
    if d["kind"] != "task":
        raise CardError(f"{where}: key 'kind' must be 'task' or 'suite', got {d['kind']!r}")
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
    alignment = _validate(d["alignment"], _ALIGNMENT_SCHEMA, f"{where}: alignment")
    if alignment["mode"] not in ALIGNMENT_MODES:
        raise CardError(f"{where}: alignment.mode must be one of {ALIGNMENT_MODES}, got {alignment['mode']!r}")
    if alignment["mode"] == "grid" and None in (alignment["start"], alignment["stop"], alignment["step"]):
        raise CardError(f"{where}: alignment mode 'grid' needs start, stop and step")
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
        if not path.is_file():
            raise CardError(f"task card file not found: {name_or_path}")
    else:
        files = _card_files()
        if name_or_path not in files:
            raise UnknownName(
                f"unknown task {name_or_path!r}{did_you_mean(name_or_path, files)}; "
                f"`ctbench tasks` lists them, or pass a path to a .yaml card"
            )
        path = files[name_or_path]
    card = parse_card(path.read_text(), str(path))
    if not name_or_path.endswith((".yaml", ".yml")) and card.name != name_or_path:
        raise CardError(f"{path}: card name {card.name!r} does not match its file name {path.stem!r}")
    return card


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
