from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cfmask.backbones import load_state_dict_file


def test_plain_wrapped_and_ddp(tmp_path: Path) -> None:
    state = {"a.weight": torch.ones(2, 2), "b": torch.zeros(1)}
    for name, obj in {
        "plain.pt": state,
        "lightning.ckpt": {"state_dict": state, "epoch": 1, "hyper_parameters": {}},
        "nested.pth": {"model": {"module": state}},
        "ddp.bin": {f"module.{k}": v for k, v in state.items()},
    }.items():
        torch.save(obj, tmp_path / name)
        loaded = load_state_dict_file(tmp_path / name)
        assert loaded.keys() == state.keys(), name
        assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        load_state_dict_file(tmp_path / "missing.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="does not contain a state dict"):
        load_state_dict_file(tmp_path / "list.pt")
    torch.save({"epoch": 3}, tmp_path / "meta.pt")
    with pytest.raises(ValueError, match="without tensors"):
        load_state_dict_file(tmp_path / "meta.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="weights_only"):
        load_state_dict_file(tmp_path / "junk.pt")
