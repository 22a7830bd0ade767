"""Where ``reproduce`` runs its cells: one :class:`Launcher` per way, behind one interface.

* ``local`` (default, :mod:`.local`): one cell after another in this process; ``--jobs N`` runs N cells
  at once as ``sbir-bench run`` subprocesses, each on a GPU no other running cell holds
  (:class:`~.local.GpuSlots`) and an equal share of the CPU threads.
* ``slurm`` (:mod:`.submitit_jobs`): one job per cell (method x dataset x seed) through submitit (imported only here, only
  when asked for); resources from the options; a cell with several GPUs runs under ``torchrun``
  inside its job. ``reproduce`` submits every cell that is not finished and returns, printing the
  job ids, unless ``--wait``.
* ``submitit-local``: the same job path through submitit's local executor (real subprocesses), so
  tests and a laptop exercise what the cluster runs.

:data:`LAUNCHERS` is the table the CLI's ``--launcher`` choices and launcher options come from (a plug-in
launcher registers through the ``sbir_bench.launchers`` entry-point group); ``reproduce`` plans, a
launcher runs or submits, and :mod:`sbir_bench.reporting.tables` writes the table.

Every cell keeps its state in ``<output>/.cells/`` (:mod:`.ledger`): a claim made atomically before it is submitted
(two ``reproduce`` commands on one folder never submit the same cell twice), and the state the job
itself writes (running / failed with its last error line). A job killed by the scheduler
(preemption, time limit) is requeued by submitit's checkpoint hook and resumes from the cell's last
checkpoint (the trainer's resume is bit-identical on CPU); a failed cell does not stop the others,
and running ``reproduce`` again resubmits only what is neither done nor running. The table is
written when the last cell ends, and on demand with ``--collect``.
"""

from __future__ import annotations

from typing import Any, Dict, List

from ..errors import ConfigError
from .base import Launcher, LauncherOption, LaunchRequest, Outcome
from .cells import CellFailed, CellRun, execute, write_table_when_complete
from .ledger import (
    CELLS,
    cell_id,
    claim,
    exception_reason,
    failure_reason,
    hold_cell,
    job_alive,
    planned_configs,
    read_state,
    release,
    save_plan,
    state_dir,
    status_lines,
    write_state,
)
from .local import GpuSlots, LocalLauncher, local_jobs, visible_gpus
from .submitit_jobs import (
    Resources,
    SubmititLauncher,
    executor,
    parse_sbatch,
    submit,
    submitit_job_class,
)

LAUNCHERS: Dict[str, Launcher] = {"local": LocalLauncher(), "slurm": SubmititLauncher("slurm", "slurm"),
                                  "submitit-local": SubmititLauncher("submitit-local", "local")}


def launcher_for(name: str, values: Dict[str, Any]) -> Launcher:
    """The launcher ``--launcher name`` means, set up with the launcher options' ``values`` (by dest); an
    option that only another launcher takes, given away from its default, is refused in one line."""
    if name not in LAUNCHERS:
        raise ConfigError(f"unknown launcher {name!r}; choose one of: {', '.join(LAUNCHERS)}")
    chosen = LAUNCHERS[name]
    own = {o.dest for o in chosen.options}
    foreign = [o for o in launcher_options() if o.dest not in own and values.get(o.dest, o.default) != o.default]
    if foreign:
        takers = sorted({n for n, l in LAUNCHERS.items() if any(o.dest == f.dest for o in l.options for f in foreign)})
        raise ConfigError(f"{', '.join(o.flag for o in foreign)} only apply to --launcher {' or '.join(takers)}; "
                          f"--launcher {name} would ignore them")
    return chosen.configure({d: values.get(d) for d in own if values.get(d) is not None})


def launcher_options() -> List[LauncherOption]:
    """Every launcher's options, each once (the command line adds them by looping over this)."""
    seen: Dict[str, LauncherOption] = {}
    for launcher in LAUNCHERS.values():
        for option in launcher.options:
            seen.setdefault(option.dest, option)
    return list(seen.values())


__all__ = ["CELLS", "LAUNCHERS", "CellFailed", "CellRun", "GpuSlots", "LaunchRequest", "Launcher", "LauncherOption",
           "LocalLauncher", "Outcome", "Resources", "SubmititLauncher", "cell_id", "claim", "exception_reason",
           "execute", "executor", "failure_reason", "hold_cell", "job_alive", "launcher_for", "launcher_options",
           "local_jobs", "parse_sbatch", "planned_configs", "read_state", "release", "save_plan", "state_dir",
           "status_lines", "submit", "submitit_job_class", "visible_gpus", "write_state", "write_table_when_complete"]
