"""The pending queue: one lazy-deletion heap per resource shape, ordered by the policy's key."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Hashable, Iterator
from typing import Any

from granary.sched.model import Job

Entry = tuple[tuple[Any, ...], int, int, Job]


def shape_group(job: Job) -> Hashable:
    """Default grouping: jobs with the same resource shape share a heap."""
    return job.spec.shape


class PendingQueue:
    """Pending jobs grouped by shape, each group a heap ordered by ``job.key``.

    Grouping by shape makes a scheduling pass cheap: all jobs of a group fit or none does, so a pass
    looks only at group heads. Removal is lazy: an entry is live while its token equals the job's.

    Args:
        group_of: maps a job to its group (default: its resource shape; fair share adds the tenant).
    """

    def __init__(self, group_of: Callable[[Job], Hashable] = shape_group) -> None:
        self.group_of = group_of
        self.groups: dict[Hashable, list[Entry]] = {}
        self.ids: set[str] = set()
        self._seq = itertools.count()
        self._entries = 0

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self.ids

    def push(self, job: Job) -> None:
        """Add (or re-key) a job."""
        job.token += 1
        self.ids.add(job.id)
        heap = self.groups.setdefault(self.group_of(job), [])
        heapq.heappush(heap, (job.key, next(self._seq), job.token, job))
        self._entries += 1
        if self._entries > 2 * len(self.ids) + 1024:
            self.compact()

    def compact(self) -> None:
        """Drop dead entries from every heap (keeps walks and pops proportional to live jobs)."""
        for group, heap in list(self.groups.items()):
            heap[:] = [e for e in heap if e[2] == e[3].token and e[3].id in self.ids]
            heapq.heapify(heap)
            if not heap:
                del self.groups[group]
        self._entries = sum(len(h) for h in self.groups.values())

    def discard(self, job: Job) -> None:
        """Remove a job (lazily)."""
        if job.id in self.ids:
            self.ids.discard(job.id)
            job.token += 1

    def head(self, group: Hashable) -> Job | None:
        """The best live job of a group, dropping dead entries on the way."""
        heap = self.groups[group]
        while heap:
            _, _, token, job = heap[0]
            if token == job.token and job.id in self.ids:
                return job
            heapq.heappop(heap)
        return None

    def heads(self) -> Iterator[tuple[Hashable, Job]]:
        """(group, head) for every non-empty group."""
        empty = []
        for group in self.groups:
            job = self.head(group)
            if job is None:
                empty.append(group)
            else:
                yield group, job
        for group in empty:
            if not self.groups[group]:
                del self.groups[group]

    def ordered(self, group: Hashable, limit: int) -> Iterator[Job]:
        """Up to ``limit`` live jobs of a group in key order, without popping (walks the heap tree)."""
        heap = self.groups.get(group, [])
        if not heap:
            return
        frontier: list[tuple[tuple[Any, ...], int, int]] = [(heap[0][0], heap[0][1], 0)]
        seen = 0
        while frontier and seen < limit:
            _, _, i = heapq.heappop(frontier)
            _, _, token, job = heap[i]
            if token == job.token and job.id in self.ids:
                seen += 1
                yield job
            for c in (2 * i + 1, 2 * i + 2):
                if c < len(heap):
                    heapq.heappush(frontier, (heap[c][0], heap[c][1], c))

    def jobs(self) -> Iterator[Job]:
        """Every live job, in no particular order."""
        for heap in self.groups.values():
            for _, _, token, job in heap:
                if token == job.token and job.id in self.ids:
                    yield job
