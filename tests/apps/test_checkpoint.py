"""Checkpoint round trips: weights, fused and torch.optim optimizer state, RNG states."""

from __future__ import annotations

import random
import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import embtab
from embtab._io import _host_tags, remove_stale_temps
from embtab.apps import checkpoint as ck
from embtab.apps.common import AppError


class _Model(nn.Module):
    """A fused-optimizer table, a sparse-gradient table and a dense layer."""

    def __init__(self) -> None:
        super().__init__()
        self.fused = embtab.EmbeddingBag(50, 8, mode="mean", optimizer=embtab.optim.Adam(lr=0.01),
                                         oov="hash", num_oov_buckets=7)
        self.sparse = embtab.Embedding(30, 8, sparse=True)
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(16, 3))

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.fused(ids, offsets), self.sparse(rows)], 1))


def _make() -> tuple[_Model, dict[str, torch.optim.Optimizer]]:
    torch.manual_seed(1)
    m = _Model()
    opts = {"dense": torch.optim.Adam(m.head.parameters(), lr=0.01),
            "sparse": torch.optim.SparseAdam([m.sparse.weight], lr=0.01)}
    return m, opts


def _step(m: _Model, opts: dict[str, torch.optim.Optimizer], g: torch.Generator) -> float:
    ids = torch.randint(0, 70, (40,), generator=g)  # some ids >= 50: hashed buckets
    offsets = torch.arange(0, 40, 4)
    rows = torch.randint(0, 30, (10,), generator=g)
    y = torch.randint(0, 3, (10,), generator=g)
    for o in opts.values():
        o.zero_grad()
    loss = F.cross_entropy(m(ids, offsets, rows), y)
    loss.backward()
    for o in opts.values():
        o.step()
    return loss.item()


def test_round_trip_continues_exactly(tmp_path):
    g = torch.Generator().manual_seed(3)
    m, opts = _make()
    for _ in range(5):
        _step(m, opts, g)
    path = tmp_path / "c.safetensors"
    ck.save_checkpoint(path, model=m, optimizers=opts, state={"epoch": 5, "history": [{"a": 1.5}]}, generator=g)
    expected = [_step(m, opts, g) for _ in range(5)]  # dropout and data draw from the RNGs
    final = {k: v.clone() for k, v in m.state_dict().items()}

    m2, opts2 = _make()
    g2 = torch.Generator().manual_seed(999)
    torch.manual_seed(12345)  # a different global RNG state, which the checkpoint must put back
    c = ck.load_checkpoint(path)
    ck.restore(c, m2, opts2)
    ck.restore_rng(c, g2)
    assert c.state == {"epoch": 5, "history": [{"a": 1.5}]}
    got = [_step(m2, opts2, g2) for _ in range(5)]
    assert got == expected
    for k, v in m2.state_dict().items():
        assert torch.equal(v, final[k]), k
    # The fused optimizer's per-row state travelled inside the model's state_dict.
    assert any(k.startswith("fused.optim_") for k in final)


def test_numpy_and_python_rng_are_restored(tmp_path):
    m, opts = _make()
    path = tmp_path / "c.safetensors"
    np.random.seed(7)
    random.seed(7)
    ck.save_checkpoint(path, model=m, optimizers=opts, state={})
    a, b = np.random.rand(3), random.random()
    np.random.seed(0)
    random.seed(0)
    ck.restore_rng(ck.load_checkpoint(path))
    assert np.array_equal(np.random.rand(3), a) and random.random() == b


def test_weights_round_trip(tmp_path):
    m, _ = _make()
    path = tmp_path / "best.safetensors"
    ck.save_weights(path, m, {"epoch": 3, "rmse": 0.5})
    m2, _ = _make()
    with torch.no_grad():
        m2.head[1].weight.zero_()
    assert ck.load_weights(path, m2) == {"epoch": 3, "rmse": 0.5}
    for (k, v), v2 in zip(m.state_dict().items(), m2.state_dict().values()):
        if "optim_" not in k:
            assert torch.equal(v, v2), k
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:  # no optimizer state in a weights file
        assert not [k for k in f.keys() if "optim_" in k]
    with pytest.raises(AppError, match="does not fit"):
        ck.load_weights(path, nn.Linear(3, 3))


def test_atomic_and_no_temp_files(tmp_path):
    m, opts = _make()
    for i in range(3):
        ck.save_checkpoint(tmp_path / "c.safetensors", model=m, optimizers=opts, state={"i": i})
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]
    # Left by a writer killed with kill -9: its process (here one that has ended) is gone.
    gone = subprocess.Popen(["true"])
    gone.wait()
    host, boot = _host_tags()
    (tmp_path / f".c.safetensors.{gone.pid}-0-{host}-{boot}-abcdef.tmp").write_bytes(b"half a file")
    assert remove_stale_temps(tmp_path) == 1
    assert ck.load_checkpoint(tmp_path / "c.safetensors").state == {"i": 2}


def test_corrupt_and_foreign_files_are_rejected(tmp_path):
    m, opts = _make()
    good = tmp_path / "c.safetensors"
    ck.save_checkpoint(good, model=m, optimizers=opts, state={})
    data = good.read_bytes()
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(AppError, match="corrupt"):
        ck.load_checkpoint(truncated)
    garbage = tmp_path / "g.safetensors"
    garbage.write_bytes(b"\x00" * 100)
    with pytest.raises(AppError, match="corrupt"):
        ck.load_checkpoint(garbage)
    from safetensors.torch import save_file

    foreign = tmp_path / "f.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign))
    with pytest.raises(AppError, match="not an embtab.checkpoint file"):
        ck.load_checkpoint(foreign)
    with pytest.raises(AppError, match="not an embtab.weights file"):
        ck.load_weights(good, m)  # a checkpoint is not a weights file
    with pytest.raises(AppError, match="not found"):
        ck.load_checkpoint(tmp_path / "missing.safetensors")


def test_checkpoint_that_does_not_fit(tmp_path):
    m, opts = _make()
    path = tmp_path / "c.safetensors"
    ck.save_checkpoint(path, model=m, optimizers=opts, state={})
    other = nn.Linear(2, 2)
    with pytest.raises(AppError, match="does not fit"):
        ck.restore(ck.load_checkpoint(path), other, {})


def _flip_a_data_bit(path) -> None:
    """One bit of the last tensor byte: the file stays a readable safetensors file."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_bit_flipped_inside_a_tensor_is_caught(tmp_path):
    m, opts = _make()
    ckpt, weights = tmp_path / "c.safetensors", tmp_path / "w.safetensors"
    ck.save_checkpoint(ckpt, model=m, optimizers=opts, state={"epoch": 1})
    ck.save_weights(weights, m, {"epoch": 1})
    from safetensors import safe_open

    for path in (ckpt, weights):
        _flip_a_data_bit(path)
        with safe_open(str(path), "pt") as f:  # safetensors itself sees nothing wrong
            [f.get_tensor(k) for k in f.keys()]
    with pytest.raises(AppError, match=r"checkpoint .* is corrupt: its tensors do not match the checksum"):
        ck.load_checkpoint(ckpt)
    with pytest.raises(AppError, match=r"weights file .* is corrupt: its tensors do not match the checksum"):
        ck.load_weights(weights, m)


def test_files_written_before_the_checksum_still_load(tmp_path):
    """A checkpoint without ``data_sha256`` (written by an earlier embtab) loads as before."""
    m, opts = _make()
    path = tmp_path / "c.safetensors"
    ck.save_checkpoint(path, model=m, optimizers=opts, state={"epoch": 2})
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    assert "data_sha256" in meta
    del meta["data_sha256"]
    from embtab._io import SAFETENSORS_DTYPES, write_safetensors

    write_safetensors(path, [(k, SAFETENSORS_DTYPES[str(t.dtype).removeprefix("torch.")], tuple(t.shape),
                              t.reshape(-1).view(torch.uint8).numpy()) for k, t in tensors.items()], meta)
    loaded = ck.load_checkpoint(path)
    assert loaded.state == {"epoch": 2}
    assert torch.equal(loaded.model_state["head.1.weight"], m.state_dict()["head.1.weight"])
