"""Training data as an endless, deterministic stream that can restart at any batch.

A `ResumableStream` is an IterableDataset that is a pure function of (seed, epoch,
position), so the training loop only records how many batches it consumed and a
resumed run sees exactly the samples the uninterrupted run would have seen.
"""
from __future__ import annotations

import random
from typing import Iterator

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info


class ResumableStream(IterableDataset):
    """An endless, deterministic stream of training samples, split over ranks and workers.

    Subclasses implement `items(epoch, readers, slot)`: this reader's share of the
    epoch's samples as cheap descriptions (e.g. a path and its boxes), in an order that
    depends only on the seed and the epoch, where readers = world size x DataLoader
    workers and no two slots share a sample (`by_index` splits any stream by position;
    sharded data can split by shard instead); and `load(item, rng)`, the expensive part
    (read, decode, augment). The stream never ends, so every rank runs exactly the same
    number of steps (the trainer stops at --max-steps) and no sample is dropped or padded:
    a reader that finishes its share of an epoch goes on with its share of the next.

    `start_batch` makes the stream begin where a checkpoint left it: each reader skips
    its share of the consumed batches as items, before `load`, so resuming costs a scan
    of descriptions, not of images.
    """

    def __init__(self, *, seed: int, batch_size: int, rank: int = 0, world: int = 1):
        super().__init__()
        self.seed, self.batch_size, self.rank, self.world = seed, batch_size, rank, world
        self.start_batch = 0

    def items(self, epoch: int, readers: int, slot: int) -> Iterator:
        raise NotImplementedError

    def load(self, item, rng: np.random.Generator):
        raise NotImplementedError

    def __iter__(self):
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        # DataLoader takes batch k of an iterator from worker k % workers. A resumed
        # iterator starts again at worker 0, so worker w plays the part that worker
        # (w + start_batch) % workers had in the uninterrupted run, whose batches before
        # start_batch were consumed already.
        role = (worker + self.start_batch) % workers
        readers, slot = self.world * workers, self.rank * workers + role
        skip = len(range(role, self.start_batch, workers)) * self.batch_size
        epoch = 0
        while True:
            count = 0
            for i, item in enumerate(self.items(epoch, readers, slot)):
                count += 1
                if skip:
                    skip -= 1
                    continue
                rng = np.random.default_rng((self.seed, epoch, slot, i))
                sample = self.load(item, rng)
                if sample is not None:  # an unusable sample is skipped (load logs why)
                    yield sample
            if count == 0:
                raise ValueError(f"reader {slot} of {readers} (processes x --num-workers) got no training "
                                 "samples: the data has fewer samples than readers; add data or use fewer readers")
            epoch += 1


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
