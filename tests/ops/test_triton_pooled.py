"""The table-batched Triton lookup (``ops/triton/pooled.py``) against the reference backend.

A collection on ``backend="triton"`` resolves every table's policy, checks its input and
pools every feature in one launch; the same collection on ``backend="reference"`` does
it feature by feature with torch ops. Outputs, gradients (weights and per-sample
weights), out-of-range counts, fused updates and errors must agree. Under Triton's
interpreter on CPU tensors without a GPU.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

import embtab  # noqa: E402
from tests.conftest import TOLERANCES  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _tables() -> list[embtab.TableConfig]:
    return [
        embtab.TableConfig("item", 30, 5, feature_names=["item", "clicked"]),  # shared, sum
        embtab.TableConfig("user", 12, 3, pooling="mean", oov="hash", num_oov_buckets=4),
        embtab.TableConfig("tag", 9, 33, pooling="max", padding_idx=0, oov="zero"),
        embtab.TableConfig("geo", 7, 1, pooling="mean", padding_idx=2, oov="padding"),
    ]


def _batch(gen: torch.Generator, batch: int = 4) -> dict:
    out = {}
    for name, high in (("item", 30), ("clicked", 30), ("user", 18), ("tag", 12), ("geo", 10)):
        lengths = torch.randint(0, 5, (batch,), generator=gen)  # empty bags included
        ids = torch.randint(-2 if name not in ("item", "clicked") else 0, high, (int(lengths.sum()),), generator=gen)
        offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)[:-1]])
        if name == "item":
            out[name] = (ids.to(DEVICE), offsets.to(DEVICE), (torch.rand(ids.numel(), generator=gen) + 0.5).to(DEVICE))
        elif name == "geo":
            out[name] = torch.randint(-1, 10, (batch, 3), generator=gen).to(DEVICE)  # fixed-length bags
        else:
            out[name] = (ids.to(DEVICE), offsets.to(DEVICE))
    return out


def _twins(dtype: torch.dtype, optimizer: object = None) -> tuple[embtab.EmbeddingBagCollection, ...]:
    torch.manual_seed(3)
    ours = embtab.EmbeddingBagCollection(_tables(), device=DEVICE, dtype=dtype, backend="triton", optimizer=optimizer)
    ref = embtab.EmbeddingBagCollection(_tables(), device=DEVICE, dtype=dtype, backend="reference", optimizer=optimizer)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def _close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> None:
    torch.testing.assert_close(a.float() if a.is_floating_point() else a, b.float() if b.is_floating_point() else b,
                               **TOLERANCES[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_forward_and_gradients_match_the_reference_backend(dtype: torch.dtype) -> None:
    ours, ref = _twins(dtype)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        batch = _batch(gen)
        psws = []
        outs = []
        for model in (ours, ref):
            b = dict(batch)
            psw = b["item"][2].to(dtype).detach().requires_grad_()
            b["item"] = (b["item"][0], b["item"][1], psw)
            out = model(b).concat()
            out.backward(torch.ones_like(out) * torch.arange(out.shape[1], device=DEVICE, dtype=dtype))
            psws.append(psw.grad)
            outs.append(out.detach())
        _close(outs[0], outs[1], dtype)
        _close(psws[0], psws[1], dtype)
    for name in ("item", "user", "tag", "geo"):
        _close(ours.embedding_bags[name].weight.grad, ref.embedding_bags[name].weight.grad, dtype)
        assert ours.embedding_bags[name].oov_count == ref.embedding_bags[name].oov_count
    assert ref.embedding_bags["user"].oov_count > 0 and ref.embedding_bags["tag"].oov_count > 0


@pytest.mark.parametrize("spec", [embtab.optim.Adam(lr=0.05), embtab.optim.RowWiseAdagrad(lr=0.1)], ids=["adam", "rowwise"])
def test_fused_training_matches_the_reference_backend(spec: embtab.optim.FusedSpec) -> None:
    ours, ref = _twins(torch.float32, spec)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        batch = _batch(gen)
        for model in (ours, ref):
            model(batch).concat().pow(2).sum().backward()
    for key, value in ref.state_dict().items():
        got = ours.state_dict()[key]
        _close(got, value, torch.float32) if value.is_floating_point() else torch.testing.assert_close(got, value)


def test_inference_matches_and_fixed_length_and_kjt_style_offsets() -> None:
    ours, ref = _twins(torch.float32)
    batch = _batch(torch.Generator().manual_seed(2))
    ids, offsets = batch["user"]
    batch["user"] = (ids, torch.cat([offsets, offsets.new_tensor([max(ids.numel() - 1, 0)])]))  # B + 1 offsets
    with torch.no_grad():
        outs = []
        for model in (ours, ref):
            b = dict(batch)
            if model is ref:  # the mapping input has no include_last_offset: give ref the same bags
                b["user"] = (ids, offsets)
            outs.append(model(b if model is ref else _as_kjt_like(b, model)).concat())
    _close(outs[0], outs[1], torch.float32)


def _as_kjt_like(batch: dict, model: embtab.EmbeddingBagCollection) -> dict:
    """The user feature with B + 1 offsets ending before the last id: its last bag runs to the end."""
    from embtab.tables import pipeline  # noqa: F401  (documents where the rule lives)

    ids, offsets = batch["user"]
    jt = _JaggedLike(ids, offsets)
    return {**batch, "user": jt}


class _JaggedLike:
    """Duck-types the part of torchrec's JaggedTensor the collection reads."""

    def __init__(self, values: torch.Tensor, offsets: torch.Tensor) -> None:
        self._v, self._o = values, offsets

    def values(self) -> torch.Tensor:
        return self._v

    def offsets(self) -> torch.Tensor:
        return self._o

    def weights_or_none(self) -> None:
        return None


_JaggedLike.__module__ = "torchrec.sparse.jagged_tensor"
_JaggedLike.__name__ = "JaggedTensor"


def _count_launches(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    from triton.runtime.jit import JITFunction

    launched: list[str] = []
    kinds = [JITFunction]
    try:
        from triton.runtime.interpreter import InterpretedFunction

        kinds.append(InterpretedFunction)
    except ImportError:  # pragma: no cover
        pass
    for kind in kinds:
        original = kind.run

        def run(self, *args, _original=original, **kwargs):  # type: ignore[no-untyped-def]
            launched.append(getattr(self, "__name__", None) or self.fn.__name__)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(kind, "run", run)
    return launched


@pytest.mark.parametrize("training", [False, True])
def test_forward_launches_do_not_grow_with_the_number_of_tables(training: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    launched = _count_launches(monkeypatch)
    counts = []
    for num_tables in (3, 9):  # every pooling mode present in both
        tables = [embtab.TableConfig(f"t{i}", 20, 4 + i, pooling=("sum", "mean", "max")[i % 3],
                                     oov=("error", "zero", "hash", "padding")[i % 4],
                                     num_oov_buckets=2 if i % 4 == 2 else 0, padding_idx=1 if i % 4 == 3 else None)
                  for i in range(num_tables)]
        ebc = embtab.EmbeddingBagCollection(tables, device=DEVICE, backend="triton")
        batch = {f"t{i}": (torch.tensor([1, 2, 3, 19], device=DEVICE), torch.tensor([0, 1, 3], device=DEVICE))
                 for i in range(num_tables)}
        launched.clear()
        with torch.set_grad_enabled(training):
            ebc(batch)
        counts.append(len(launched))
    assert counts[0] == counts[1] == 3, counts  # one launch per pooling mode, whatever the tables


def test_bad_ids_and_offsets_are_named_after_the_one_batched_check() -> None:
    ebc = embtab.EmbeddingBagCollection([embtab.TableConfig("a", 10, 3), embtab.TableConfig("b", 10, 2)],
                                        device=DEVICE, backend="triton", optimizer=embtab.optim.SGD(lr=1.0))
    before = ebc.embedding_bags["b"].weight.detach().clone()
    good = (torch.tensor([1, 2, 3], device=DEVICE), torch.tensor([0, 1], device=DEVICE))
    with pytest.raises(IndexError, match=r"feature 'b' \(table 'b'\): id 10 at position 2 is out of range"):
        ebc({"a": good, "b": (torch.tensor([1, 2, 10], device=DEVICE), torch.tensor([0, 1], device=DEVICE))}).concat().sum().backward()
    with pytest.raises(ValueError, match=r"feature 'a' \(table 'a'\): offsets must start at 0"):
        ebc({"a": (good[0], torch.tensor([1, 2], device=DEVICE)), "b": good})
    with pytest.raises(ValueError, match=r"feature 'b' \(table 'b'\): offsets point past the end of input"):
        ebc({"a": good, "b": (good[0], torch.tensor([0, 5], device=DEVICE))})
    assert torch.equal(ebc.embedding_bags["b"].weight.detach(), before)
