"""Local PyTorch files: one reader with clear errors for every model loader (pipeline.checkpoints)."""
from __future__ import annotations

import pytest
import torch

from pipeline.checkpoints import plain_state_dict, read_torch_file
from pipeline.errors import ConfigError, DataError, PipelineError


def test_missing_file_raises_the_callers_message_and_kind(tmp_path):
    with pytest.raises(ConfigError, match="train one first"):
        read_torch_file(tmp_path / "nope.pt", "train one first", missing_error=ConfigError)


def test_unreadable_file_names_the_file_and_what_it_should_be(tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a zip or pickle at all")
    with pytest.raises(DataError, match=r"broken\.pt: not a lung model \("):
        read_torch_file(bad, "missing", what="a lung model", error=DataError)


def test_state_dict_unwrapped_and_dataparallel_prefix_removed(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"state_dict": {"module.conv.weight": torch.ones(2), "fc.bias": torch.zeros(1)}}, path)
    state = plain_state_dict(read_torch_file(path, "missing"), path)
    assert sorted(state) == ["conv.weight", "fc.bias"]
    assert torch.equal(state["conv.weight"], torch.ones(2))


def test_a_file_that_is_no_state_dict_is_refused(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.ones(1)], path)
    with pytest.raises(PipelineError, match="holds a list, not a state dict"):
        plain_state_dict(read_torch_file(path, "missing"), path)


def test_a_truncated_classifier_checkpoint_is_a_clear_error(tmp_path):
    from pipeline.classifier.model import load_checkpoint

    path = tmp_path / "fold0.pt"
    torch.save({"w": torch.ones(1000)}, path)
    path.write_bytes(path.read_bytes()[:100])  # a copy cut short
    with pytest.raises(PipelineError, match="fold0.pt: not a classifier checkpoint"):
        load_checkpoint(path, 2)
