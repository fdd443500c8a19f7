"""The Ray executor: worker actors on a Ray cluster run crafting groups; the driver writes.

- **Workers** are actors (:class:`CellWorker`) that keep their workspace (loaded models, clean
  predictions, the current adversarial batch) from group to group: one per GPU for ``cuda`` groups
  (``num_gpus=1``), and ``workers`` CPU actors of ``cpus_per_worker`` CPUs (and torch threads) for
  the rest. The decoded datasets go to the object store once (``ray.put``) and every worker reads
  that copy; nothing is decoded again.
- **Scheduling**: a group's cells go to one idle worker as one call per cell (the actor runs them in
  order, so the group is crafted once), and the next group goes to the next worker that is free.
- **Shards** (bench/cells.py ``shard_plan``): a group of many shards (a crafting group, or a cascade's chain) is
  split into spans of shards, one per worker of its kind that the cluster holds; each worker measures its span for
  every cell of the group, one ``shards`` call per shard (outcomes only, which the driver writes as they land), and
  once every span is in, one worker assembles each cell's row from all of them (``run`` with the outcomes). In a
  chain, a worker measures each shard for the chain's attacks in order, recording what each broke on that shard
  (bench/audit/cascade.py), so a later attack starts on a shard as soon as that shard's earlier attacks are done.
  Numbers do not depend on where a shard ran: every batch is seeded by its index in the data.
- **Rows**: a worker returns each cell's row (with its warnings and tracebacks, which the driver
  puts in the run log); the driver yields it to the runner, which appends and fsyncs it. Only the
  driver writes, so resume, Ctrl-C, the table and the report are the local executor's.
- **Faults**: a worker that dies (node lost, OOM kill, ``ray.kill``) takes its group's unfinished
  cells with it; they go to a fresh worker (retries are counted here, not by Ray, so a cell that
  landed is never run twice). After ``max_retries`` lost workers the group's cells are ``failed``
  with the worker, its node and Ray's reason. A cell whose model file is missing on the worker's
  node is ``skipped`` with the node named.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import os
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import ray
import ray.exceptions

from bench import sources
from bench.cells import Workspace, crafting_runs, data_key, measure_shards, run_cell, shard_plan, unrun_row
from bench.executors import ExecutorError, Job, group_key, groups
from bench.failures import Interrupted, one_line
from bench.specs import CellSpec, ExecutorSpec

log = logging.getLogger(__name__)
NAMESPACE = "bench"  # worker actors are named bench-<run id>-worker-<k> in it
LOG_KEY = "_log"  # a row's log records from its worker: (logger, level, text)
SHARDS_KEY = "_shards"  # a row's shards that ran on its worker: (shard, outcomes), written by the driver
_POLL_S = 0.2  # how often the driver looks at Ctrl-C while waiting for rows
PLACEMENT_TIMEOUT_S = 600.0  # queued groups and no worker of their kind placed for this long: they fail


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.setFormatter(logging.Formatter("%(message)s"))
        self.records: list[tuple[str, int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.name, record.levelno, self.format(record)))


class CellWorker:
    """One worker process: a workspace of its own over the shared decoded datasets."""

    def __init__(self, suite, datasets, run_id: str, env: dict[str, Any], threads: int | None):
        import torch

        if threads:  # Ray sets OMP_NUM_THREADS from num_cpus; torch is told the same explicitly
            torch.set_num_threads(threads)
        context = ray.get_runtime_context()
        self.node = context.get_node_id()
        self.name = f"{socket.gethostname()}:{os.getpid()} node {self.node[:8]}"
        self.ws = Workspace(suite, datasets, run_id, env, worker=self.name)

    def replay(self, rows: list[dict[str, Any]]) -> None:
        """A cascade's chain taken over from another worker (or a resumed run): the images its
        earlier rows broke stay broken."""
        self.ws.cascade.replay(rows, {c.cell_id: c for c in self.ws.suite.cells()})

    def shards(self, cells: list[CellSpec], shards: list[int], parts: dict) -> dict[str, Any]:
        """The outcomes of ``shards`` for cells of one crafting (bench.cells.measure_shards), those in ``parts``
        (landed before: (cell id, shard) → outcomes) left out. They come back for the driver to write."""
        handler = _Records()
        loggers = [logging.getLogger("bench"), logging.getLogger("bench.trace")]
        for logger in loggers:
            logger.addHandler(handler)
        new: list[tuple[str, int, dict]] = []
        self.ws.shard_parts.update(parts)
        self.ws.on_shard = lambda cell_id, j, part: new.append((cell_id, j, part))
        try:
            cells = [c for c in cells if not (c.device.startswith("cuda:") and c.device != "cuda:0")
                     and not sources.missing_files(c.model)]  # their run says why
            measure_shards(cells, self.ws, shards)
        finally:
            for logger in loggers:
                logger.removeHandler(handler)
        return {SHARDS_KEY: new, LOG_KEY: handler.records, "worker": self.name}

    def run(self, cell: CellSpec, parts: dict[int, dict] | None = None) -> dict[str, Any]:
        """The cell's row; ``parts``: its shards that landed before (a resume, or other workers' spans). The shards
        it runs come back with the row (SHARDS_KEY), for the driver to write: the driver is the only writer."""
        if cell.device.startswith("cuda:") and cell.device != "cuda:0":
            return unrun_row(cell, self.ws, "skipped", f"{cell.device}: a Ray worker has one GPU, its cuda:0; "
                                                       "write `devices: [cuda]` and Ray picks the GPU (docs/scaling-out.md)")
        missing = sources.missing_files(cell.model)
        if missing:
            return unrun_row(cell, self.ws, "skipped", f"{missing[0]} is not on worker {self.name}: every Ray node "
                                                       "needs the suite's model files at the same path (docs/scaling-out.md)")
        handler = _Records()
        loggers = [logging.getLogger("bench"), logging.getLogger("bench.trace")]
        for logger in loggers:
            logger.addHandler(handler)
        new: list[tuple[str, int, dict]] = []
        self.ws.shard_parts.update({(cell.cell_id, j): p for j, p in (parts or {}).items()})
        self.ws.on_shard = lambda cell_id, j, part: new.append((cell_id, j, part))
        try:
            row = run_cell(cell, self.ws)
        finally:
            for logger in loggers:
                logger.removeHandler(handler)
            for key in [k for k in self.ws.shard_parts if k[0] == cell.cell_id]:  # its row is made: memory back
                del self.ws.shard_parts[key]
        row[LOG_KEY] = handler.records
        row[SHARDS_KEY] = new
        return row


@dataclass
class _Split:
    """A group whose shards are spread over workers: its spans still out, then the group itself (rows)."""

    group: "_Group"
    pending: int


@dataclass
class _Group:
    cells: list[CellSpec]
    gpu: bool
    attempts: int = 0  # workers lost while running it
    landed: set[str] = field(default_factory=set)
    rows: list[dict[str, Any]] = field(default_factory=list)  # its rows that landed (a cascade replays them)
    span: list[int] | None = None  # shards only (no rows): one span of a split group
    split: _Split | None = None
    calls_out: int = 0  # a span's shard calls not yet landed

    @property
    def remaining(self) -> list[CellSpec]:
        return [c for c in self.cells if c.cell_id not in self.landed]


@dataclass
class _Worker:
    handle: Any
    gpu: bool
    label: str  # "worker-3"; the row's ``worker`` column says host, process and node once it answers
    ready: bool = False  # Ray placed it and its constructor ran: only then does it get a group
    group: _Group | None = None
    name: str | None = None


class RayExecutor:
    name = "ray"

    def __init__(self, spec: ExecutorSpec):
        self.spec = spec
        self._started_ray = False
        self._workers: list[_Worker] = []
        self._lost: list[dict[str, str]] = []
        self._retries = 0
        self._resources: dict[str, float] = {}
        self._places = {False: 0, True: 0}  # CPU workers and GPU workers the alive nodes can hold

    def start(self) -> None:
        self._quiet = _RayLog()  # Ray's own log lines (its banner, token authentication) to the run log, not the terminal
        if not ray.is_initialized():  # else the caller's own Ray session (a notebook, a test), used as it is
            kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING, configure_logging=False)
            try:
                with self._quiet.stderr():  # the processes Ray starts write to our stderr: to the run log instead
                    if self.spec.address:
                        ray.init(address=self.spec.address, **kwargs)
                    else:
                        ray.init(**kwargs)  # a local instance sized to this machine (its CPUs and GPUs)
            except Exception as exc:  # ConnectionError, a bad address, a version mismatch …
                where = f"at {self.spec.address}" if self.spec.address else "locally"
                raise ExecutorError(f"cannot start Ray {where}: {one_line(exc)}") from None
            self._started_ray = True
        self._resources = ray.cluster_resources()
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        cpw = self.spec.cpus_per_worker
        # per node: an actor cannot straddle two nodes, so 2 nodes × 3 CPUs hold two 2-CPU workers, not three
        self._places = {False: sum(int(r.get("CPU", 0)) // cpw for r in nodes), True: sum(int(r.get("GPU", 0)) for r in nodes)}
        if not self._places[False]:
            largest = max((int(r.get("CPU", 0)) for r in nodes), default=0)
            raise ExecutorError(f"cpus_per_worker {cpw}: no node of the Ray cluster has that many CPUs (the largest has {largest})")

    def close(self) -> None:
        try:
            for w in self._workers:
                _kill(w.handle)
        finally:
            self._workers = []
            if self._started_ray:
                self._started_ray = False
                ray.shutdown()
            quiet = getattr(self, "_quiet", None)
            if quiet is not None:
                quiet.close()
                self._quiet = None

    def describe(self) -> dict[str, Any]:
        return {"type": "ray", "address": self.spec.address or "local", "cpus_per_worker": self.spec.cpus_per_worker,
                "max_retries": self.spec.max_retries, "cluster": {k: v for k, v in self._resources.items() if k in ("CPU", "GPU")},
                "retries": self._retries, "lost_workers": self._lost}

    # --- the driver loop -------------------------------------------------------------------------

    def run(self, job: Job) -> Iterator[dict[str, Any]]:
        if getattr(self, "_quiet", None) is not None:
            self._quiet.flush()  # what Ray said while starting, now that the run log exists
        cascade = job.suite.cascade
        todo = [_Group(g, g[0].device.startswith("cuda")) for g in groups(job.cells, cascade)]
        if cascade:  # rows of an earlier session of a resumed run: each chain's worker replays its own
            chain = {c.cell_id: group_key(c, cascade=True) for c in job.suite.cells()}
            for g in todo:
                key = group_key(g.cells[0], cascade=True)
                g.rows = [r for r in job.done if chain.get(r.get("cell_id")) == key]

        if not self._places[True] and any(g.gpu for g in todo):
            for g in [g for g in todo if g.gpu]:
                yield from self._give_up(g, job, "skipped", "the Ray cluster has no GPU (none of its nodes lists one)")
            todo = [g for g in todo if not g.gpu]
        if not todo:
            return
        data = ray.put(job.datasets)  # one copy in the object store, sent to each worker's node once
        actor = ray.remote(max_restarts=0, max_task_retries=0)(CellWorker)
        counter, submitted = itertools.count(), itertools.count()
        queue = {kind: collections.deque(g for g in todo if g.gpu == kind) for kind in (False, True)}
        inflight: dict[Any, tuple[_Worker, CellSpec]] = {}  # a cell's call → its worker and cell
        starting: dict[Any, _Worker] = {}  # a worker's readiness call → the worker
        order: dict[Any, int] = {}
        failed_starts = {False: 0, True: 0}  # workers of a kind lost before they were ready, in a row
        waiting_since = {False: None, True: None}  # queued work and no ready worker of that kind since

        def spawn(gpu: bool) -> None:
            label = f"worker-{next(counter)}"
            threads = self.spec.cpus_per_worker
            options = dict(num_gpus=1, num_cpus=0) if gpu else dict(num_cpus=threads)
            # named, so that `ray list actors` shows which run a worker belongs to
            handle = actor.options(name=f"bench-{job.run_id}-{label}", namespace=NAMESPACE, **options).remote(
                job.suite, data, job.run_id, job.env, threads)
            worker = _Worker(handle, gpu, label)
            self._workers.append(worker)
            starting[handle.__ray_ready__.remote()] = worker

        wanted = self.spec.workers or self._places[False]
        if wanted > self._places[False]:
            log.warning("%d CPU workers of %d CPU(s) each do not fit on the Ray cluster's nodes; starting %d", wanted,
                        self.spec.cpus_per_worker, self._places[False])
        # one cell (or a cascade's chain) over many workers: its shards in spans
        todo = self._split(todo, job, min(wanted, self._places[False]))
        queue = {kind: collections.deque(g for g in todo if g.gpu == kind) for kind in (False, True)}
        self._queue = queue
        for kind, size in ((False, min(wanted, self._places[False])), (True, self._places[True])):
            for _ in range(min(size, len(queue[kind]))):
                spawn(kind)

        while inflight or any(queue.values()):
            for w in list(self._workers):
                if w.ready and w.group is None and queue[w.gpu]:
                    w.group = queue[w.gpu].popleft()
                    job.started(w.group.remaining[0])
                    if cascade and w.group.rows:  # a chain taken over: the worker first replays what landed
                        try:  # (an idle worker: it answers at once)
                            ray.get(w.handle.replay.remote(w.group.rows))
                        except ray.exceptions.RayTaskError as exc:  # its own bug: the chain cannot go on right
                            group, w.group = w.group, None
                            yield from self._give_up(group, job, "failed", f"cascade replay failed: {one_line(exc)}")
                            continue
                        except ray.exceptions.RayError as exc:  # it died: as any lost worker
                            yield from self._lost_worker(w, exc, inflight, queue, job, spawn)
                            continue
                    for ref, cell in self._submit(w, job):
                        inflight[ref], order[ref] = (w, cell), next(submitted)
            calls = [*inflight, *starting]
            if not calls:  # (should not happen: queued work always has a worker running or starting) no busy loop
                time.sleep(_POLL_S)
            ready, _ = ray.wait(calls, num_returns=len(calls), timeout=_POLL_S)
            for ref in sorted(ready, key=lambda r: order.get(r, -1)):  # a worker's rows in the order it ran them
                if ref in starting:
                    w = starting.pop(ref)
                    try:
                        ray.get(ref)
                        w.ready, failed_starts[w.gpu] = True, 0
                    except ray.exceptions.RayError as exc:
                        failed_starts[w.gpu] += 1
                        reason = self._drop(w, exc)
                        # a constructor that raised (the package missing on a node) will raise again: no new worker
                        hopeless = getattr(exc, "actor_init_failed", False) or failed_starts[w.gpu] > self.spec.max_retries
                        if queue[w.gpu] and not hopeless:
                            spawn(w.gpu)
                        elif not any(x.gpu == w.gpu for x in self._workers):  # nobody left for the queued groups
                            while queue[w.gpu]:
                                yield from self._give_up(queue[w.gpu].popleft(), job, "failed", f"no worker could start: {reason}")
                    continue
                if ref not in inflight:  # dropped with a lost worker's other calls
                    continue
                w, cell = inflight.pop(ref)
                try:
                    row = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:  # the worker's own bug, not the cell's: this cell fails
                    if cell is None:  # a shards call: its shards are left to the cells' own runs, which say what broke
                        log.warning("worker %s could not measure shards: %s", w.name or w.label, one_line(exc))
                        self._landed(w, None, {}, job, queue)
                        continue
                    row = unrun_row(cell, Workspace(job.suite, job.datasets, job.run_id, job.env, worker=w.name or w.label),
                                    "failed", f"worker error: {one_line(exc)}")
                except ray.exceptions.RayError as exc:  # the worker died, or its result went with its node
                    yield from self._lost_worker(w, exc, inflight, queue, job, spawn)
                    continue
                landed = self._landed(w, cell, row, job, queue)
                if landed is not None:
                    yield landed
            yield from self._check_placement(queue, waiting_since, job)
            if job.stop():
                # rows that land while we stop are kept; the rest is cancelled with its workers
                ready, _ = ray.wait(list(inflight), num_returns=len(inflight), timeout=0)
                for ref in sorted(ready, key=order.__getitem__):
                    w, cell = inflight.pop(ref)
                    try:
                        landed = self._landed(w, cell, ray.get(ref), job, queue)
                    except ray.exceptions.RayError:
                        continue
                    if landed is not None:
                        yield landed
                raise Interrupted()

    def _check_placement(self, queue: dict, waiting_since: dict, job: Job) -> Iterator[dict[str, Any]]:
        """Queued work with no ready worker of its kind: say so every minute, give up after
        PLACEMENT_TIMEOUT_S (the cluster lost the nodes, or other jobs hold them)."""
        now = time.monotonic()
        for kind in (False, True):
            if not queue[kind] or any(w.ready and w.gpu == kind for w in self._workers):
                waiting_since[kind] = None
                continue
            since = waiting_since[kind] = waiting_since[kind] or now
            waited = now - since
            if waited > PLACEMENT_TIMEOUT_S:
                reason = (f"no Ray {'GPU' if kind else 'CPU'} worker could be placed in {PLACEMENT_TIMEOUT_S:.0f} s "
                          f"(cluster: {ray.available_resources()} available)")
                while queue[kind]:
                    yield from self._give_up(queue[kind].popleft(), job, "failed", reason)
            elif int(waited) // 60 != int(waited - _POLL_S) // 60 and waited >= 60:
                log.warning("waiting %d s for Ray to place a %s worker (%d group(s) queued)", waited,
                            "GPU" if kind else "CPU", len(queue[kind]))

    def _submit(self, w: _Worker, job: Job) -> list[tuple[Any, CellSpec | None]]:
        """The calls for the worker's group: a span's one ``shards`` call; or, for each run of cells sharing a
        crafting, a ``shards`` call for all their shards first (when they are many cells over many shards: each
        shard crafted once) and a ``run`` call per cell."""
        # one call per shard: each shard's outcomes come back, and are written, as it finishes (a lost worker or a
        # Ctrl-C loses at most the shard in progress)
        group = w.group
        if group.span is not None:  # (taken over after a lost worker: only the shards still missing)
            todo = [j for j in group.span if any((c.cell_id, j) not in job.shard_parts for c in group.cells)] or group.span[:1]
            group.calls_out = len(todo)
            return [(w.handle.shards.remote(group.cells, [j], self._known(job, group.cells, j)), None) for j in todo]
        calls = []
        for run in crafting_runs(group.remaining):
            n = self._shards_of(job, run[0])
            if n > 1:
                calls += [(w.handle.shards.remote(run, [j], self._known(job, run, j)), None) for j in range(n)
                          if any((c.cell_id, j) not in job.shard_parts for c in run)]
            for cell in run:
                parts = {j: p for (cid, j), p in job.shard_parts.items() if cid == cell.cell_id}
                calls.append((w.handle.run.remote(cell, parts), cell))
        return calls

    @staticmethod
    def _known(job: Job, cells: list[CellSpec], shard: int) -> dict:
        """The outcomes of ``shard`` that landed before, for these cells (the worker leaves them out)."""
        return {(c.cell_id, shard): job.shard_parts[(c.cell_id, shard)] for c in cells if (c.cell_id, shard) in job.shard_parts}

    @staticmethod
    def _shards_of(job: Job, cell: CellSpec) -> int:
        return len(shard_plan(len(job.datasets[data_key(job.suite, cell.model)]), cell.batch_size, job.suite.shard_size))

    def _split(self, todo: list[_Group], job: Job, cpu_workers: int) -> list[_Group]:
        """Groups of many shards as spans over the workers of their kind (module docstring); the rest as they are."""
        out: list[_Group] = []
        for g in todo:
            n = self._shards_of(job, g.cells[0])
            missing = [j for j in range(n) if any((c.cell_id, j) not in job.shard_parts for c in g.cells)]
            k = min(len(missing), self._places[True] if g.gpu else cpu_workers)
            if n < 2 or k < 2:
                out.append(g)
                continue
            split = _Split(g, k)
            size = -(-len(missing) // k)
            for i in range(0, len(missing), size):
                # a chain's span replays the chain's rows that landed before (a resume): its later attacks need them
                out.append(_Group(g.cells, g.gpu, rows=list(g.rows), span=missing[i : i + size], split=split))
            split.pending = -(-len(missing) // size)
        return out

    def _span_done(self, group: _Group, queue: dict) -> None:
        """One span of a split group is in (or given up: the group's own run measures what is missing)."""
        split = group.split
        split.pending -= 1
        if split.pending == 0:
            queue[group.gpu].appendleft(split.group)  # every span in: the rows next

    def _landed(self, w: _Worker, cell: CellSpec | None, row: dict[str, Any], job: Job, queue: dict) -> dict[str, Any] | None:
        """A call's result: shards' outcomes are written (before any row that needs them: a resume finds them),
        a row is returned for the runner to write; ``None`` for a ``shards`` call."""
        for cell_id, shard, part in row.pop(SHARDS_KEY, []):
            job.shard_done(cell_id, shard, part)
            job.shard_parts[(cell_id, shard)] = part
        for name, level, text in row.pop(LOG_KEY, []):
            logging.getLogger(name).log(level, "%s [%s]", text, row.get("worker"))
        w.name = row.get("worker") or w.name
        group = w.group
        if cell is None:  # a shards call
            if group is not None and group.span is not None:
                group.calls_out -= 1
                if group.calls_out <= 0:
                    w.group = None
                    self._span_done(group, queue)
            return None
        for key in [k for k in job.shard_parts if k[0] == cell.cell_id]:  # the row is in: its shards are on disk
            del job.shard_parts[key]
        if group is not None:
            group.landed.add(cell.cell_id)
            group.rows.append(row)
            if not group.remaining:
                job.batches(job.batches_of_group(group.cells))
                w.group = None
        return row

    def _drop(self, w: _Worker, exc: BaseException) -> str:
        """Forget a worker Ray reports lost (and make sure it is gone: an unavailable actor may come
        back, still holding its CPUs or GPU); return the reason."""
        _kill(w.handle)
        if w in self._workers:
            self._workers.remove(w)
        reason = _death(exc)
        self._lost.append({"worker": w.name or f"{w.label} (it never answered)", "reason": reason})
        return reason

    def _lost_worker(self, w: _Worker, exc: Exception, inflight: dict, queue: dict, job: Job, spawn) -> Iterator[dict[str, Any]]:
        """A worker died: drop its other calls, and give its group to another worker, or fail the
        group's remaining cells after the last retry."""
        for ref in [r for r, (owner, _) in inflight.items() if owner is w]:
            del inflight[ref]
        reason = self._drop(w, exc)
        who = w.name or f"{w.label} (it never answered)"
        group, w.group = w.group, None
        if group is not None:
            group.attempts += 1
            if group.attempts <= self.spec.max_retries:
                self._retries += 1
                log.warning("worker %s lost (%s); its %d unfinished cell(s) run again on another worker (retry %d of %d)",
                            who, reason, len(group.remaining), group.attempts, self.spec.max_retries)
                queue[group.gpu].appendleft(group)
            else:
                yield from self._give_up(group, job, "failed", f"lost its worker {group.attempts} time(s), the last {who}: {reason}")
        if queue[w.gpu]:
            spawn(w.gpu)  # keep the pool's size while there is work for it

    def _give_up(self, group: _Group, job: Job, status: str, reason: str) -> Iterator[dict[str, Any]]:
        """Rows for a group's cells that have none, saying why they did not run. A span gives up no rows: its group's
        own run (next in the queue) measures the shards it left, or gives up in its turn."""
        if group.span is not None:
            self._span_done(group, self._queue)
            return
        scratch = Workspace(job.suite, job.datasets, job.run_id, job.env, worker="ray driver")
        for cell in group.remaining:
            group.landed.add(cell.cell_id)
            yield unrun_row(cell, scratch, status, reason)
        job.batches(job.batches_of_group(group.cells))


class _RayLog(logging.Handler):
    """Takes the ``ray`` logger's records off the terminal for as long as the executor lives, into the run log
    (``bench.trace``, which the runner writes to run.log); records from before the run log exists are kept and
    written once it does. The logger's own settings come back on close."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        from bench.failures import _trace

        self.trace, self.pending, self.ready = _trace, [], False  # ready: the run log is attached (run() began)
        self.logger = logging.getLogger("ray")
        self.propagate, self.handlers = self.logger.propagate, list(self.logger.handlers)  # Ray's own stderr handler too
        self.logger.propagate = False
        for handler in self.handlers:
            self.logger.removeHandler(handler)
        self.logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        if self.ready:
            self.trace.handle(record)
        else:
            self.pending.append(record)

    @contextlib.contextmanager
    def stderr(self):
        """File descriptor 2 into a file while Ray starts (its own processes keep that file as their stderr);
        :meth:`flush` copies what it holds into the run log."""
        self.captured = tempfile.TemporaryFile()
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(self.captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)

    def flush(self) -> None:
        """Called when the run log is attached: what was kept goes there, and so does everything after."""
        self.ready = True
        captured = getattr(self, "captured", None)
        if captured is not None:
            captured.seek(0)
            for line in captured.read().decode("utf-8", "replace").splitlines():
                if line.strip():
                    self.pending.append(logging.LogRecord("ray.stderr", logging.INFO, __file__, 0, line, None, None))
            captured.seek(0)
            captured.truncate()
        pending, self.pending = self.pending, []
        for record in pending:
            self.emit(record)

    def close(self) -> None:
        self.flush()
        if getattr(self, "captured", None) is not None:
            self.captured.close()
        self.logger.removeHandler(self)
        for handler in self.handlers:
            self.logger.addHandler(handler)
        self.logger.propagate = self.propagate
        super().close()


def _kill(handle: Any) -> None:
    try:
        ray.kill(handle, no_restart=True)
    except Exception:  # already gone, or the cluster connection with it: nothing left to stop
        pass


def _sentences(text: str, limit: int) -> str:
    """``text`` whole if it fits in ``limit`` characters, else its sentences that do (never cut mid-sentence)."""
    if len(text) <= limit:
        return text
    cut = text.rfind(". ", 0, limit)
    return text[: cut + 1] if cut > 0 else text[:limit].rsplit(" ", 1)[0] + " …"


def _death(exc: BaseException) -> str:
    """Ray's account of a lost actor in one line: why it died and where. Its message opens with a
    generic line, lists ``key: value`` fields, and says the cause in a line of its own."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    fields = dict(line.split(": ", 1) for line in lines[1:] if ": " in line and not line.startswith("The "))
    causes = [line for line in lines[1:] if line.startswith("The ") and not line.startswith("The actor never ran")]
    cause = _sentences(causes[-1] if causes else lines[0] if lines else "", 600)
    where = ", ".join(f"{k} {fields[k]}" for k in ("ip", "pid") if k in fields)
    return f"{type(exc).__name__}: {cause}" + (f" ({where})" if where else "")
