"""Imported by the workers' fork server only: it dies with the process that started it (so a
parent killed with SIGKILL leaves no fork server, hence no worker, behind), imports once what
every worker needs (:func:`ctbench.worker.preload`), limits the BLAS libraries to one thread and
tunes malloc as a long-lived process would be (every worker inherits both)."""

from ctbench.sandbox import die_with_parent, long_lived_malloc
from ctbench.worker import _one_thread, preload

die_with_parent()
long_lived_malloc()
preload()
_one_thread()
BLAS_LIMITED = True
