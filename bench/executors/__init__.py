"""Executors: where a run's cells execute.

The runner is the only writer. It hands an executor a :class:`Job` (the cells still to run and what
they share) and appends every row the executor yields, in whatever order rows land. Each executor
is one module:

- ``local`` (:mod:`.local`): this process, one cell after another;
- ``ray`` (:mod:`.ray_actors`): worker actors on a Ray cluster, one crafting group at a time each.

An executor has ``start()`` (connect; :class:`ExecutorError` when it cannot, before the run folder
exists), ``run(job)`` (a generator of rows), ``close()`` and ``describe()`` (what run.json records).
The suite key ``executor:`` is parsed here; the command line's ``--executor`` and friends override it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Protocol

from bench.specs import CellSpec, ExecutorSpec

NAMES = ("local", "ray")
KEYS = {
    "type": "local or ray",
    "address": "ray: 'auto' or 'ray://HOST:10001' (default: start a local Ray instance)",
    "workers": "ray: integer >= 1, CPU worker actors (default: the cluster's CPUs // cpus_per_worker)",
    "cpus_per_worker": "ray: integer >= 1 (default 1)",
    "max_retries": "ray: integer >= 0, runs of a group again after its worker is lost (default 2)",
}
INSTALL_RAY = "pip install -e '.[ray]' (or `make install`)"


class ExecutorError(RuntimeError):
    """The executor cannot be used as asked (Ray missing, no cluster at the address); nothing ran."""


@dataclass
class Job:
    """What an executor needs to run cells: the suite, the decoded datasets (shared by every cell of
    a model's preprocessing), the run's identity, the cells still to run (in suite order) and the
    driver's hooks: ``stop()`` is polled (Ctrl-C), ``started(cell)`` and ``batches(n)`` feed the progress bars."""

    suite: Any  # bench.suite.Suite
    datasets: dict
    run_id: str
    env: dict[str, Any]
    cells: list[CellSpec]
    stop: Callable[[], bool] = lambda: False
    done: list[dict[str, Any]] = field(default_factory=list)  # rows that landed before (a resume): a cascade replays them
    started: Callable[[CellSpec], None] = lambda cell: None
    batches: Callable[[int], None] = lambda n: None
    # shards that landed before (a resume): (cell id, shard) → outcomes; and the hook a new shard's outcomes go to
    shard_parts: dict = field(default_factory=dict)
    shard_done: Callable[[str, int, dict], None] = lambda cell_id, shard, part: None

    def batches_of(self, cell: CellSpec) -> int:
        """Attack batches of one crafting of this cell's group."""
        from bench.cells import data_key

        return math.ceil(len(self.datasets[data_key(self.suite, cell.model)]) / self.suite.batch_size)

    def batches_of_group(self, cells: list[CellSpec]) -> int:
        """Attack batches of every crafting among ``cells`` (a cascade's chain holds many)."""
        return sum(self.batches_of(g[0]) for g in groups(cells))


class Executor(Protocol):
    def start(self) -> None: ...

    def run(self, job: Job) -> Iterator[dict[str, Any]]: ...

    def close(self) -> None: ...

    def describe(self) -> dict[str, Any]: ...


def group_key(cell: CellSpec, cascade: bool = False) -> tuple:
    """The cells that share one crafting of adversarial images: model, attack, ε, device and
    precision (and, for adaptive cells, the defense and method). The unit of work of an executor.
    With a cascade every attack of a (model, device, precision) waits for the ones before it, so
    the unit is that whole chain (bench/audit/cascade.py)."""
    return (cell.model, cell.device, cell.precision) if cascade else cell.crafting_key


def groups(cells: list[CellSpec], cascade: bool = False) -> list[list[CellSpec]]:
    """Cells by unit of work (:func:`group_key`), groups in order of their first cell, cells in suite order."""
    out: dict[tuple, list[CellSpec]] = {}
    for cell in cells:
        out.setdefault(group_key(cell, cascade), []).append(cell)
    return list(out.values())


def parse(value: Any, key: str, check) -> ExecutorSpec:
    """The suite's ``executor:`` (a name, or a mapping with ``type`` and the keys in :data:`KEYS`).
    ``check`` is the suite loader's validator (its ``fail``, ``mapping`` and ``integer``)."""
    if isinstance(value, str):
        value = {"type": value}
    entry = check.mapping(value, key, KEYS, required=("type",))
    if entry["type"] not in NAMES:
        raise check.fail(f"{key}.type", f"unknown executor {entry['type']!r}; allowed: {', '.join(NAMES)}")
    spec = ExecutorSpec(type=entry["type"])
    if entry["type"] == "local" and len(entry) > 1:
        extra = next(k for k in entry if k != "type")
        raise check.fail(f"{key}.{extra}", "applies to the ray executor only")
    if "address" in entry:
        address = entry["address"]
        if not isinstance(address, str) or not address.strip():
            raise check.fail(f"{key}.address", "must be 'auto' or 'ray://HOST:PORT'")
        spec = replace(spec, address=address.strip())
    for name, lo in (("workers", 1), ("cpus_per_worker", 1), ("max_retries", 0)):
        if name in entry:
            spec = replace(spec, **{name: check.integer(entry[name], f"{key}.{name}", lo=lo)})
    return spec


def from_suite(suite: Any) -> ExecutorSpec:
    """The suite's ``executor:`` entry, checked (a :class:`~bench.suite.SuiteError` naming the file, line and key)."""
    return parse(suite.executor_entry, "executor", suite.checker())


def override(spec: ExecutorSpec, **given: Any) -> ExecutorSpec:
    """The suite's executor with the command line's choices (those not None) on top. A Ray-only
    option with the local executor is an error."""
    given = {k: v for k, v in given.items() if v is not None}
    spec = replace(spec, **given)
    if spec.type == "local":
        extra = [k for k in given if k != "type"]
        if extra:
            raise ExecutorError(f"--{extra[0].replace('_', '-')} applies to --executor ray only")
    return spec


def create(spec: ExecutorSpec) -> Executor:
    """An executor for the spec (not started). Ray missing → :class:`ExecutorError` with how to install it."""
    if spec.type == "local":
        from bench.executors.local import Local

        return Local()
    try:
        from bench.executors.ray_actors import RayExecutor
    except ImportError as exc:
        raise ExecutorError(f"the ray executor needs Ray, which is not installed ({exc}); install it with {INSTALL_RAY}") from None
    return RayExecutor(spec)
