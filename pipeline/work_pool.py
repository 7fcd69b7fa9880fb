"""Run a function over many items on N processes, the calling process being one of them.

Why not ``multiprocessing.Pool``: a spawned worker needs about a second to start and import its libraries
(measured 2026-12-02 on the 2-core dev machine for the conversion workers), and while N fresh workers start
nothing is done. Here the caller starts N - 1 helper processes and converts items itself from the first
moment, so the start-up of the helpers costs only their own core's time, not everybody's. Helpers get
small batches from the front of the list, a few ahead of need; the caller takes single items from the
back, so the two meet without a shared counter and nobody waits long at the end.

``fn(item)`` must be a module-level function (spawn pickles it) that returns a result instead of raising
for a bad item. A helper that dies (killed, out of memory, a crash inside a C library) raises a
:class:`pipeline.errors.PipelineError` naming how many items were lost; what finished before is already
delivered to ``on_result``.
"""
from __future__ import annotations

import multiprocessing as mp
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Sequence

from pipeline.errors import PipelineError


def _batch(fn: Callable, items: list) -> list:
    return [fn(item) for item in items]


def run_shared(items: Sequence, fn: Callable[[Any], Any], on_result: Callable[[Any], None], workers: int,
               initializer: Callable | None = None, initargs: tuple = (), batch: int = 2,
               local_setup: Callable[[], Callable[[], None]] | None = None) -> None:
    """``on_result(fn(item))`` for every item, on ``workers`` processes in all (the caller and
    ``workers - 1`` spawned helpers, each started with ``initializer(*initargs)``). Results arrive in
    no fixed order. ``local_setup()``, when given, runs in the caller before it starts working and
    returns the function that undoes it (e.g. fewer OpenCV threads while the helpers run)."""
    todo = deque(items)
    if workers <= 1 or len(todo) < 2:
        for item in todo:
            on_result(fn(item))
        return
    helpers = min(workers - 1, max(1, len(todo) // (2 * batch)))
    restore = local_setup() if local_setup else None
    pending: dict = {}
    lost = 0
    try:
        with ProcessPoolExecutor(helpers, mp_context=mp.get_context("spawn"), initializer=initializer,
                                 initargs=initargs) as pool:
            try:
                while todo or pending:
                    while todo and len(pending) < 2 * helpers:  # every helper busy, plus one batch in hand
                        part = [todo.popleft() for _ in range(min(batch, len(todo)))]
                        pending[pool.submit(_batch, fn, part)] = len(part)
                    done, _ = wait(list(pending), timeout=0 if todo else None, return_when=FIRST_COMPLETED)
                    for fut in done:
                        results = fut.result()  # BrokenProcessPool when a helper died
                        del pending[fut]
                        for r in results:
                            on_result(r)
                    if todo and not done:
                        on_result(fn(todo.pop()))  # the caller works from the back while the helpers are busy
            except BrokenProcessPool:
                lost = sum(pending.values()) + len(todo)
    finally:
        if restore:
            restore()
    if lost:
        raise PipelineError(f"a helper process died (killed, out of memory, or a crash inside a decoder) with "
                            f"{lost} item(s) unfinished; the finished ones are kept. Run the command again (it "
                            "resumes), or with one worker to see which file crashes it.")
