"""pipeline.work_pool.run_shared: every item once, the caller working too, a dead helper reported."""
from __future__ import annotations

import os
import time

import pytest

from pipeline.errors import PipelineError
from pipeline.work_pool import run_shared


def _slow_square(item):
    k, parent = item
    time.sleep(0.02)
    return k, k * k, os.getpid() == parent


def _die_on_zero(item):
    k, parent = item
    if k == 0 and os.getpid() != parent:
        os._exit(3)  # a helper killed as by a decoder crash
    return k


def test_every_item_once_and_the_caller_works_from_the_start():
    got = []
    run_shared([(k, os.getpid()) for k in range(40)], _slow_square, got.append, workers=2)
    assert sorted(k for k, _, _ in got) == list(range(40))
    assert all(sq == k * k for k, sq, _ in got)
    assert any(in_caller for _, _, in_caller in got)  # no idle wait for the helper's start-up
    # one worker: everything in the caller, in order
    one = []
    run_shared([(k, os.getpid()) for k in range(5)], _slow_square, one.append, workers=1)
    assert [k for k, _, _ in one] == list(range(5)) and all(c for _, _, c in one)


def test_a_dead_helper_is_an_error_after_the_finished_items_are_delivered():
    got = []
    with pytest.raises(PipelineError, match=r"helper process died .* (\d+) item\(s\) unfinished") as err:
        run_shared([(k, os.getpid()) for k in range(40)], _die_on_zero, got.append, workers=2)
    assert 0 not in got and len(set(got)) == len(got)  # the first batch went to the helper, nothing twice
    lost = int(str(err.value).split(" item(s)")[0].rsplit(" ", 1)[1])
    assert len(got) + lost == 40
