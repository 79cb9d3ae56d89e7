"""StreamingLoader: a torch DataLoader over a StreamingDataset that knows its resume state."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from granary.stream.dataset import Batch, StreamingDataset


class StreamingLoader:
    """Iterate a :class:`StreamingDataset` through ``torch.utils.data.DataLoader`` workers, keeping state.

    DataLoader workers hold copies of the dataset, so the position advances here, in the training process,
    one global batch per batch yielded. ``state_dict()`` after ``k`` batches resumes at batch ``k + 1``.

    Args:
        dataset: the dataset (its ``batch_size`` is the per-rank batch).
        num_workers: DataLoader worker processes (0 reads in this process with reader threads).
        **dataloader_kwargs: passed to DataLoader (``pin_memory``, ``prefetch_factor``, ...).
    """

    def __init__(self, dataset: StreamingDataset, *, num_workers: int = 0, **dataloader_kwargs: Any) -> None:
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        bad = {"batch_size", "shuffle", "sampler", "batch_sampler", "drop_last"} & set(dataloader_kwargs)
        if bad:
            raise ValueError(f"StreamingLoader batches and orders itself; drop {sorted(bad)}")
        self.dataset = dataset
        self.num_workers = num_workers
        self.dataloader_kwargs = dataloader_kwargs

    def __len__(self) -> int:
        return self.dataset.steps_per_pass()

    def __iter__(self) -> Iterator[Batch]:
        if self.num_workers == 0:
            yield from self.dataset
            return
        from torch.utils.data import DataLoader

        from granary.stream.dataset import register_with_torch

        register_with_torch()
        ds = self.dataset
        start = ds.position
        steps = ds.steps_per_pass(start)
        # StreamingDataset is registered as a virtual IterableDataset subclass (see register_with_torch).
        loader: DataLoader[Any] = DataLoader(ds, batch_size=None, num_workers=self.num_workers,  # type: ignore[arg-type]
                                             **self.dataloader_kwargs)
        for i, batch in enumerate(loader):
            ds.position = start + (i + 1) * ds.global_batch
            yield batch
        ds.position = start + steps * ds.global_batch

    def state_dict(self) -> dict[str, Any]:
        """The resume state after the batches yielded so far."""
        return self.dataset.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from a state dict (any world size or worker count)."""
        self.dataset.load_state_dict(state)
