"""What a method's worker process can reach: everything except the hidden paths, no TCP.

Linux Landlock (kernel 5.13+, unprivileged) restricts the calling process and every process it
starts, irrevocably. The worker applies it before it receives its work package:

- files: the worker reads the system (/usr, /lib, /etc, /proc, ...) and the code it runs
  (sys.path, the interpreter, every imported package's folder), nothing else: not the home
  folder, not /tmp, not another result store. Inside those roots the hidden paths (the dataset
  mirror, the data cache, the result store, any data file a card read) stay out: Landlock
  rules allow, they cannot deny, so "root except P" is built as: for every folder on the way
  from the root to P, allow each entry that is not itself on the way to (or inside) P. Writing is allowed only in the worker's private temporary
  folder (a fresh one per package) and to character devices (/dev/null, ...): one package
  cannot leave anything on disk for another;
- TCP: no bind, no connect (ABI 4+): a method cannot ask an MLflow server for other records;
- the parent's memory: Landlock forbids ptrace (hence ``/proc/<pid>/mem``) of processes outside
  the sandbox; signals and abstract UNIX sockets are scoped to the sandbox too (ABI 6+).

Where Landlock is missing (older kernels, macOS), :func:`restrict` returns a level without
``filesystem`` and the records say so; the process boundary still holds (the worker never
receives test values, pool target spectra, cards or tasks).
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path
from typing import Iterable

_SYS_CREATE_RULESET = {"x86_64": 444, "aarch64": 444, "arm64": 444}
_SYS_ADD_RULE = {"x86_64": 445, "aarch64": 445, "arm64": 445}
_SYS_RESTRICT_SELF = {"x86_64": 446, "aarch64": 446, "arm64": 446}
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_PDEATHSIG = 1

# filesystem access rights, by the ABI that introduced them
_FS_ABI1 = (1 << 13) - 1  # execute .. make_sym
_FS_REFER = 1 << 13  # ABI 2
_FS_TRUNCATE = 1 << 14  # ABI 3
_FS_IOCTL_DEV = 1 << 15  # ABI 5
_FILE_RIGHTS_ABI1 = (1 << 0) | (1 << 1) | (1 << 2)  # execute, write_file, read_file
_READ_FILE = (1 << 0) | (1 << 2)  # execute, read_file
_READ_DIR = _READ_FILE | (1 << 3)  # + read_dir
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1  # ABI 4
_SCOPE_ABSTRACT_UNIX, _SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover
        return None


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 where there is none."""
    libc = _libc()
    nr = _SYS_CREATE_RULESET.get(os.uname().machine) if libc is not None else None
    if nr is None:
        return 0
    abi = libc.syscall(nr, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION))
    return max(0, int(abi))


def die_with_parent() -> None:
    """Linux: SIGKILL this process when the process that started it dies (no orphan workers)."""
    libc = _libc()
    if libc is not None:
        import signal

        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def long_lived_malloc() -> None:
    """glibc: serve large arrays from the heap, as a long-running process ends up doing.

    A fresh process maps every allocation over 128 KB anew (page faults on first touch) and
    unmaps it on free; glibc raises that threshold only after frees it sees. A worker lives for
    one package, so it never gets there: its linear algebra ran 1.5x slower than the same code
    in a long-lived process. Fixing the thresholds in the fork server (inherited by every worker)
    removes the difference."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    libc.mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024)
    libc.mallopt(M_TRIM_THRESHOLD, 256 * 1024 * 1024)


def _real(p: str | os.PathLike[str]) -> str:
    return os.path.realpath(os.path.expanduser(str(p)))


def _is_within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


SYSTEM_ROOTS = ("/usr", "/lib", "/lib32", "/lib64", "/bin", "/sbin", "/etc", "/proc", "/sys", "/dev")
"""Readable by a worker besides the code it runs: the system's programs, libraries and config,
and the kernel's views (/proc's other processes stay out of reach: Landlock forbids ptrace)."""


def code_roots() -> list[str]:
    """The folders of the code a worker may run: sys.path, the interpreter's prefixes, and the
    folder of every imported module's top-level package (editable installs map packages outside
    sys.path)."""
    roots = {_real(p) for p in sys.path if p and os.path.isdir(_real(p))}
    roots |= {_real(sys.prefix), _real(sys.base_prefix), _real(sys.exec_prefix)}
    for name, mod in list(sys.modules.items()):
        if "." in name:
            continue
        f = getattr(mod, "__file__", None)
        if f:
            d = os.path.dirname(_real(f))
            roots.add(d if os.path.basename(f) == "__init__.py" else _real(f))
    return sorted(roots)


def hidden_paths(paths: Iterable[str | os.PathLike[str] | None]) -> tuple[list[str], list[str]]:
    """(hidden, unhideable): the existing paths among ``paths`` (real, deduplicated, nested ones
    dropped), and those that cannot be hidden because they contain the Python installation or
    ctbench's own code."""
    real = sorted({_real(p) for p in paths if p and os.path.exists(_real(p))})
    code = _code_paths()
    keep: list[str] = []
    unhideable: list[str] = []
    for p in real:
        if any(_is_within(c, p) for c in code):
            unhideable.append(p)
        elif not any(_is_within(p, k) for k in keep):
            keep.append(p)
    return keep, unhideable


def _code_paths() -> list[str]:
    import ctbench

    return sorted({_real(sys.prefix), _real(sys.base_prefix), _real(Path(ctbench.__file__).parent)})


def plan_rules(hidden: Iterable[str | os.PathLike[str] | None], roots: Iterable[str] | None = None) -> dict[str, object]:
    """What a worker may read: every root (default :data:`SYSTEM_ROOTS` + :func:`code_roots`)
    except what lies under a hidden path. Computed once in the parent, applied by each worker
    with :func:`restrict`. Returns ``{"read": [(path, is_dir)], "hidden": [...], "unhideable": [...]}``."""
    hide, unhideable = hidden_paths(hidden)
    roots = sorted({_real(r) for r in (roots if roots is not None else (*SYSTEM_ROOTS, *code_roots())) if os.path.exists(_real(r))})
    roots = [r for r in roots if not any(_is_within(r, o) for o in roots if o != r)]  # nested roots: the outer one
    read: list[tuple[str, bool]] = []
    for root in roots:
        if any(_is_within(root, h) for h in hide):
            continue
        if any(_is_within(h, root) for h in hide):
            read += _except(root, hide)
        else:
            read.append((root, os.path.isdir(root)))
    return {"read": read, "hidden": hide, "unhideable": unhideable}


def _except(root: str, hidden: list[str]) -> list[tuple[str, bool]]:
    """(path, is_dir) rules that make all of ``root`` but ``hidden`` reachable: for each folder
    on the way to a hidden path, every entry not itself on the way (Landlock rules allow; they
    cannot deny)."""
    rules: list[tuple[str, bool]] = []

    def on_the_way(p: str) -> bool:
        return any(_is_within(h, p) for h in hidden)

    def walk(folder: str) -> None:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return
        for entry in entries:
            real = _real(entry.path)
            if any(_is_within(real, h) for h in hidden) or on_the_way(real):
                continue  # hidden, or a link to (or above) a hidden path: reached by its real path
            try:
                rules.append((entry.path, os.path.isdir(real)))
            except OSError:
                continue
        for entry in entries:
            if on_the_way(entry.path) and entry.path not in hidden and entry.is_dir(follow_symlinks=False):
                walk(entry.path)

    walk(root)
    return rules


def _devices() -> list[str]:
    """The character devices of /dev (null, zero, urandom, tty, ...), which may be written."""
    import stat

    out = []
    try:
        for entry in os.scandir("/dev"):
            try:
                if stat.S_ISCHR(entry.stat(follow_symlinks=False).st_mode):
                    out.append(entry.path)
            except OSError:
                continue
    except OSError:
        pass
    return out


def restrict(plan: dict[str, object], writable: str | None = None, deny_tcp: bool = True) -> dict[str, object]:
    """Sandbox this process (and its future children) for good: it can read what ``plan`` (from
    :func:`plan_rules`) allows, write only in ``writable`` (a private temporary folder) and to
    the character devices, and (``deny_tcp``) open no TCP connection. Returns what was applied:
    ``{"landlock_abi": int, "filesystem": [hidden paths] or None, "writable": ..., "tcp":
    "denied"/"allowed", "unhideable": [...]}``."""
    hide = plan["hidden"]
    level: dict[str, object] = {"landlock_abi": 0, "filesystem": None, "tcp": "allowed", "unhideable": plan["unhideable"]}
    abi = landlock_abi()
    if abi < 1:
        return level
    libc = _libc()
    machine = os.uname().machine
    fs = _FS_ABI1 | (_FS_REFER if abi >= 2 else 0) | (_FS_TRUNCATE if abi >= 3 else 0) | (_FS_IOCTL_DEV if abi >= 5 else 0)
    file_rights = _FILE_RIGHTS_ABI1 | (_FS_TRUNCATE if abi >= 3 else 0) | (_FS_IOCTL_DEV if abi >= 5 else 0)
    read_dir, read_file = _READ_DIR, _READ_FILE
    net = (_NET_BIND_TCP | _NET_CONNECT_TCP) if (deny_tcp and abi >= 4) else 0
    scoped = (_SCOPE_ABSTRACT_UNIX | _SCOPE_SIGNAL) if abi >= 6 else 0
    attr = _RulesetAttr(fs, net, scoped)
    size = ctypes.sizeof(_RulesetAttr) if abi >= 6 else (16 if abi >= 4 else 8)
    ruleset = libc.syscall(_SYS_CREATE_RULESET[machine], ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), f"landlock_create_ruleset failed: {os.strerror(ctypes.get_errno())}")
    try:
        rules = [(path, read_dir if is_dir else read_file) for path, is_dir in plan["read"]]
        rules += [(dev, file_rights) for dev in _devices()]
        if writable:
            rules.append((_real(writable), fs))
        for path, rights in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                rule = _PathBeneathAttr(rights, fd)
                libc.syscall(_SYS_ADD_RULE[machine], ctypes.c_int(ruleset), ctypes.c_int(_RULE_PATH_BENEATH),
                             ctypes.byref(rule), ctypes.c_uint32(0))
            finally:
                os.close(fd)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        if libc.syscall(_SYS_RESTRICT_SELF[machine], ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
            raise OSError(ctypes.get_errno(), f"landlock_restrict_self failed: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(ruleset)
    level.update(landlock_abi=abi, filesystem=hide, writable="a private temporary folder" if writable else None,
                 tcp="denied" if net else "allowed")
    return level
