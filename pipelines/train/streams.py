"""Training data as an endless, deterministic stream that can restart exactly where it stopped.

A `ResumableStream` is an IterableDataset that is a pure function of (seed, epoch,
position), split over readers (processes x DataLoader workers). Every sample it yields
carries its reader's position (the epoch and the index of the reader's next item), so the
training loop records, per reader, how far that reader really got, items that failed to
load included, and a resumed run sees exactly the samples the uninterrupted run would
have seen, whatever the data holds.
"""
from __future__ import annotations

import random
from typing import Callable, Iterator, NamedTuple

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info


class ReaderPosition(NamedTuple):
    """Where a reader stands: the next item it reads is item `index` of its share of `epoch`."""

    reader: int  # rank * workers + role: the reader's slot in the data split
    epoch: int
    index: int


class ResumableStream(IterableDataset):
    """An endless, deterministic stream of training samples, split over ranks and workers.

    Subclasses implement `items(epoch, readers, slot)`: this reader's share of the
    epoch's samples as cheap descriptions (e.g. a path and its boxes), in an order that
    depends only on the seed and the epoch, where readers = world size x DataLoader
    workers and no two slots share a sample (`by_index` splits any stream by position;
    sharded data can split by shard instead); and `load(item, rng)`, the expensive part
    (read, decode, augment), which returns None for an item it cannot use. The stream
    never ends, so every rank runs exactly the same number of steps (the trainer stops
    at --max-steps) and no sample is dropped or padded: a reader that finishes its share
    of an epoch goes on with its share of the next.

    Resuming: `start_positions` maps a reader's slot to the (epoch, index) it reached
    (what the trainer recorded from the batches it consumed); that reader skips the
    items before it as descriptions, before `load`, so resuming costs a scan of
    descriptions, not of images, and an item that failed to load is never counted
    twice or replayed. `start_batch` (batches consumed per process) says which role each
    DataLoader worker plays now. A reader with no recorded position skips its share of
    `start_batch` full batches, which is exact only when every item loads (a reader the
    trainer never consumed a batch from has no share to skip).
    """

    def __init__(self, *, seed: int, batch_size: int, rank: int = 0, world: int = 1):
        super().__init__()
        self.seed, self.batch_size, self.rank, self.world = seed, batch_size, rank, world
        self.start_batch = 0
        self.start_positions: dict[int, tuple[int, int]] = {}

    def items(self, epoch: int, readers: int, slot: int) -> Iterator:
        raise NotImplementedError

    def load(self, item, rng: np.random.Generator):
        raise NotImplementedError

    def __iter__(self):
        for sample, _ in self.positioned():
            yield sample

    def positioned(self) -> Iterator[tuple[object, ReaderPosition]]:
        """(sample, this reader's position after it) for this process and DataLoader worker."""
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        # DataLoader takes batch k of an iterator from worker k % workers. A resumed
        # iterator starts again at worker 0, so worker w plays the part that worker
        # (w + start_batch) % workers had in the uninterrupted run, whose batches before
        # start_batch were consumed already.
        role = (worker + self.start_batch) % workers
        readers, slot = self.world * workers, self.rank * workers + role
        if slot in self.start_positions:
            epoch, skip = self.start_positions[slot]
        else:
            epoch, skip = 0, len(range(role, self.start_batch, workers)) * self.batch_size
        while True:
            count = loaded = 0
            whole = skip == 0  # this pass reads the epoch's share from its first item
            for i, item in enumerate(self.items(epoch, readers, slot)):
                count += 1
                if skip:
                    skip -= 1
                    continue
                rng = np.random.default_rng((self.seed, epoch, slot, i))
                sample = self.load(item, rng)
                if sample is not None:  # an unusable sample is skipped (load logs why)
                    loaded += 1
                    yield sample, ReaderPosition(slot, epoch, i + 1)
            if count == 0:
                raise ValueError(f"reader {slot} of {readers} (processes x --num-workers) got no training "
                                 "samples: the data has fewer samples than readers; add data or use fewer readers")
            if whole and loaded == 0:  # every later epoch would fail alike: stop instead of spinning
                raise ValueError(f"reader {slot} of {readers} (processes x --num-workers): none of its {count} "
                                 f"items in epoch {epoch} could be loaded (the warnings above say why)")
            epoch += 1


class Positioned(IterableDataset):
    """The stream's samples paired with their reader positions: what the trainer's DataLoader reads."""

    def __init__(self, stream: ResumableStream):
        super().__init__()
        self.stream = stream

    def __iter__(self):
        return self.stream.positioned()


class WithPosition:
    """A collate function for `Positioned` samples: (collate(samples), the reader's position after
    the batch). A batch's samples all come from one reader, in order, so its last sample's
    position is where that reader stands once the batch is consumed."""

    def __init__(self, collate: Callable):
        self.collate = collate

    def __call__(self, pairs: list) -> tuple[object, ReaderPosition]:
        return self.collate([sample for sample, _ in pairs]), pairs[-1][1]


def loaded_batches(stream: ResumableStream, batch_size: int,
                   rng_of: Callable[[int], np.random.Generator] = np.random.default_rng) -> Iterator[list]:
    """One pass over the stream's epoch 0 as a single reader, in its order: lists of up to
    batch_size loaded samples (items that fail to load left out). Validation and evaluation
    read streams this way; `rng_of(i)` is item i's generator, so every pass draws the same."""
    pending: list = []
    for i, item in enumerate(stream.items(0, 1, 0)):
        sample = stream.load(item, rng_of(i))
        if sample is None:
            continue
        pending.append(sample)
        if len(pending) == batch_size:
            yield pending
            pending = []
    if pending:
        yield pending


def by_index(items: Iterator, readers: int, slot: int) -> Iterator:
    """Item i goes to reader i % readers."""
    for i, item in enumerate(items):
        if i % readers == slot:
            yield item


def shuffled(items: Iterator, buffer_size: int, rng: random.Random) -> Iterator:
    """Streaming shuffle: a reservoir of `buffer_size` items, memory flat in the stream length."""
    buf: list = []
    for item in items:
        if len(buf) < buffer_size:
            buf.append(item)
            continue
        j = rng.randrange(buffer_size)
        yield buf[j]
        buf[j] = item
    rng.shuffle(buf)
    yield from buf
