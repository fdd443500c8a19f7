"""The local executor: every cell in this process, in suite order (cells of one crafting group are
adjacent, so each adversarial batch is crafted once: a group of many shards is measured shard by shard for all its
cells first, bench.cells.measure_shards, then each cell's row is assembled)."""

from __future__ import annotations

from typing import Any, Iterator

from bench.cells import Workspace, crafting_runs, measure_shards, run_cell, worker_name
from bench.executors import Job, group_key
from bench.failures import Interrupted


class Local:
    name = "local"

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"type": "local", "worker": worker_name()}

    def run(self, job: Job) -> Iterator[dict[str, Any]]:
        ws = Workspace(job.suite, job.datasets, job.run_id, job.env, on_batch=job.batches, should_stop=job.stop,
                       shard_parts=job.shard_parts, on_shard=job.shard_done)
        if job.suite.cascade and job.done:  # a resumed cascade: the images earlier rows broke stay broken
            ws.cascade.replay(job.done, {c.cell_id: c for c in job.suite.cells()})
        seen: set = set()
        for run in crafting_runs(job.cells):
            if job.stop():
                raise Interrupted()
            if len(run) > 1 and len(ws.shards(run[0])) > 1:
                measure_shards(run, ws)
            for cell in run:
                if job.stop():
                    raise Interrupted()
                job.started(cell)
                row = run_cell(cell, ws)
                group = group_key(cell)
                if group not in seen and row["status"] != "ok":
                    job.batches(job.batches_of(cell))  # nothing to craft for a group that cannot run
                seen.add(group)
                yield row
