import pytest
import torch

from pipeline.classifier import torch_device
from pipeline.detector import resolve_detector_device as ultralytics_device
from pipeline.device import parse_device, require_gpus, resolve_threads, use_threads
from pipeline.errors import ConfigError


@pytest.mark.parametrize("spec, expected", [
    ("cpu", "cpu"), ("MPS", "mps"), ("0", [0]), (1, [1]), ("0,1", [0, 1]), ("[0, 1]", [0, 1]),
    ([2, 3], [2, 3]), ("cuda", [0]), ("cuda:1", [1]),
])
def test_parse_device(spec, expected):
    assert parse_device(spec) == expected


def test_auto_follows_cuda():
    assert parse_device("auto") == ([0] if torch.cuda.is_available() else "cpu")
    assert parse_device(None) == parse_device("auto")


@pytest.mark.parametrize("bad", ["gpu", "0,x", ",", "-1", []])
def test_bad_device_names_the_key(bad):
    with pytest.raises(ConfigError, match="run.device"):
        parse_device(bad)


def test_both_consumers_agree():
    assert ultralytics_device("0,1") == [0, 1] and ultralytics_device("0") == 0 and ultralytics_device("cpu") == "cpu"
    assert torch_device("cpu") == (torch.device("cpu"), [])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_gpu_requested_without_cuda_is_a_clear_error():
    with pytest.raises(ConfigError, match="CUDA is not available"):
        require_gpus([0], "0")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        torch_device("0")


def test_threads_default_is_every_core_and_survive_ultralytics_device_selection():
    import os

    assert resolve_threads(0) == len(os.sched_getaffinity(0))
    assert resolve_threads(3) == 3
    with pytest.raises(ConfigError, match="run.threads"):
        resolve_threads(-1)
    before = torch.get_num_threads()
    try:
        from pipeline.detector import import_ultralytics

        import_ultralytics(threads=2)
        from ultralytics.utils.torch_utils import select_device

        select_device("cpu", verbose=False)  # ultralytics resets torch's threads here
        assert torch.get_num_threads() == 2
        use_threads(1)
        select_device("cpu", verbose=False)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
