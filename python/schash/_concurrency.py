"""Work beside the training loop: items made ahead in a worker thread, a block run with a given
number of torch threads, and an iterable made anew on each pass."""

from __future__ import annotations

import torch


def ahead(items, depth: int = 2):
    """The items of an iterator, made up to ``depth`` ahead in a worker thread.

    Training batches are made (sliced, augmented, standardised: about a third of a step on 10k
    cells × 2,000 genes) while the network trains on the previous one, so the two overlap on a
    second core; the torch and SciPy work on both sides releases the GIL.  The items and the order
    in which they draw random numbers are those of the plain loop: one producer, in order.  A
    failure in the producer is raised here; leaving the loop early stops the producer.
    """
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def offer(entry) -> bool:  # False once the consumer has gone
        while not stop.is_set():
            try:
                q.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for item in items:
                if not offer((None, item)):
                    return
            offer((None, done))
        except BaseException as exc:  # handed to the consumer, raised there
            offer((exc, None))

    worker = threading.Thread(target=produce, name="schash-batches", daemon=True)
    worker.start()
    try:
        while True:
            exc, item = q.get()
            if exc is not None:
                raise exc
            if item is done:
                return
            yield item
    finally:
        stop.set()
        worker.join()


class threads:
    """Run with a given number of torch CPU threads, restoring the previous setting afterwards.

    Small networks train several times faster on one thread: the per-step work is too
    small to split, and a second thread that must wait for a busy core stalls every step.
    """

    def __init__(self, n: int | None):
        self.n, self.before = n, torch.get_num_threads()

    def __enter__(self):
        if self.n:
            torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.before)


class Again:
    """An iterable that makes its items anew each time it is iterated."""

    def __init__(self, make):
        self.make = make

    def __iter__(self):
        return iter(self.make())
