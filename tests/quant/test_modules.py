"""embtab.quantize / dequantize / save_quantized / load_quantized on tables, collections and models."""

from __future__ import annotations

import pytest
import torch

import embtab
from embtab.quant import LAYOUTS
from embtab.quant.modules import QuantizedEmbedding, QuantizedEmbeddingBag, QuantizedModel


class Classifier(torch.nn.Module):
    def __init__(self, vocab: int = 200, dim: int = 12) -> None:
        super().__init__()
        self.embed = embtab.EmbeddingBag(vocab, dim, mode="mean", padding_idx=0, oov="hash", num_oov_buckets=7,
                                         optimizer=embtab.optim.Adam(lr=0.01))
        self.words = embtab.Embedding(vocab, 4)
        self.head = torch.nn.Linear(dim + 4, 3)

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        first = self.words(ids[offsets])  # (B, 4)
        return self.head(torch.cat([self.embed(ids, offsets), first], 1))


def _batch(g: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    g = g or torch.Generator().manual_seed(1)
    return torch.randint(1, 200, (60,), generator=g), torch.arange(0, 60, 6)


def test_quantize_returns_a_copy_of_the_models_class():
    model = Classifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = embtab.quantize(model, "int8")
    assert isinstance(q, Classifier) and isinstance(q, QuantizedModel) and type(q).__name__ == "QuantizedClassifier"
    assert isinstance(q.embed, QuantizedEmbeddingBag) and isinstance(q.words, QuantizedEmbedding)
    assert isinstance(model.embed, embtab.EmbeddingBag) and model.embed.optimizer is not None  # the input is unchanged
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert q.head is not model.head and torch.equal(q.head.weight, model.head.weight)
    # Each table is one uint8 tensor, rows x row bytes, under the float table's key.
    sd = q.state_dict()
    assert sd["embed.weight"].dtype == torch.uint8 and sd["embed.weight"].shape == (207, LAYOUTS["int8"].row_bytes(12))
    assert not [k for k in sd if "optim_" in k]
    ids, offsets = _batch()
    torch.testing.assert_close(q(ids, offsets), model(ids, offsets), atol=0.02, rtol=0.0)


def test_the_head_still_trains():
    q = embtab.quantize(Classifier(), "int4", method="greedy")
    opt = torch.optim.SGD(q.parameters(), lr=0.5)
    assert [n for n, _ in q.named_parameters()] == ["head.weight", "head.bias"]
    ids, offsets = _batch()
    y = torch.randint(0, 3, (10,), generator=torch.Generator().manual_seed(2))
    table = q.embed.weight.clone()
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(q(ids, offsets), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.5
    assert torch.equal(q.embed.weight, table)


def test_per_table_dtypes_and_names():
    q = embtab.quantize(Classifier(), "int8", per_table={"words": "float16", "embed": "int2"})
    assert (q.embed.dtype, q.words.dtype) == ("int2", "float16")
    with pytest.raises(ValueError, match=r"per_table names 'item', which is no table of this model; its tables are \['embed', 'words'\]"):
        embtab.quantize(Classifier(), per_table={"item": "int4"})
    with pytest.raises(ValueError, match=r"unknown quantized dtype 'int3'"):
        embtab.quantize(Classifier(), "int3")
    with pytest.raises(ValueError, match=r"method must be 'minmax'"):
        embtab.quantize(Classifier(), method="best")
    with pytest.raises(ValueError, match="quantized already"):
        embtab.quantize(embtab.quantize(Classifier()))
    with pytest.raises(ValueError, match="holds no embtab.Embedding"):
        embtab.quantize(torch.nn.Linear(3, 3))


def test_non_finite_rows_are_named():
    bag = embtab.EmbeddingBag(10, 3)
    with torch.no_grad():
        bag.weight[4, 1] = float("nan")
    with pytest.raises(ValueError, match="row 4 holds a non-finite value"):
        embtab.quantize(bag)


@pytest.mark.parametrize("dtype", list(LAYOUTS))
def test_dequantize_gives_the_float_model_back(dtype):
    model = Classifier()
    q = embtab.quantize(model, dtype)
    back = q.dequantize()
    assert type(back) is Classifier and isinstance(back.embed, embtab.EmbeddingBag)
    assert back.embed.oov == "hash" and back.embed.num_oov_buckets == 7 and back.embed.padding_idx == 0
    ids, offsets = _batch()
    torch.testing.assert_close(back(ids, offsets), q(ids, offsets), atol=1e-5, rtol=1e-5)
    assert back.embed.weight.requires_grad  # trainable again


def test_max_norm_is_applied_to_every_row_first():
    torch.manual_seed(0)
    bag = embtab.EmbeddingBag(30, 5, mode="sum", max_norm=1.0)
    q = embtab.quantize(bag, "float16")
    assert q.spec.max_norm is None
    ids, offsets = torch.tensor([3, 4, 3, 29]), torch.tensor([0, 2])
    torch.testing.assert_close(q(ids, offsets), bag(ids, offsets).detach(), atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("dtype", ["int8", "int4", "bfloat16"])
def test_save_and_load_a_model(tmp_path, dtype):
    model = Classifier()
    q = embtab.quantize(model, dtype, per_table={"words": "int2"})
    path = tmp_path / "model.safetensors"
    embtab.save_quantized(q, path, info={"labels": ["a", "b", "c"]})
    with pytest.raises(ValueError, match=r"holds a tests\.quant\.test_modules\.Classifier model; pass model="):
        embtab.load_quantized(path)
    loaded = embtab.load_quantized(path, model=Classifier())
    assert loaded.quantized_info == {"labels": ["a", "b", "c"]}
    assert loaded.words.dtype == "int2" and loaded.embed.dtype == dtype
    for k, v in q.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    ids, offsets = _batch()
    assert torch.equal(loaded(ids, offsets), q(ids, offsets))
    with pytest.raises(ValueError, match=r"table 'embed' is 207 rows x 8 in the model, 207 x 12 in the file"):
        embtab.load_quantized(path, model=Classifier(dim=8))


def test_save_and_load_a_table_and_a_collection(tmp_path):
    bag = embtab.EmbeddingBag(50, 9, mode="max", padding_idx=3)
    q = embtab.quantize(bag, "int4")
    embtab.save_quantized(q, tmp_path / "t.safetensors")
    t = embtab.load_quantized(tmp_path / "t.safetensors")
    ids, offsets = torch.tensor([1, 3, 40, 2]), torch.tensor([0, 1])
    assert isinstance(t, QuantizedEmbeddingBag) and t.padding_idx == 3 and torch.equal(t(ids, offsets), q(ids, offsets))

    ebc = embtab.EmbeddingBagCollection([embtab.TableConfig("a", 100, 8, feature_names=["a", "b"]),
                                         embtab.TableConfig("c", 20, 4, pooling="mean", oov="zero")])
    qe = embtab.quantize(ebc, "int8")
    embtab.save_quantized(qe, tmp_path / "c.safetensors")
    back = embtab.load_quantized(tmp_path / "c.safetensors")
    batch = {"a": (torch.tensor([1, 2]), torch.tensor([0, 1])), "b": (torch.tensor([5]), torch.tensor([0, 0])),
             "c": (torch.tensor([-1, 3]), torch.tensor([0, 1]))}
    assert isinstance(back, embtab.EmbeddingBagCollection) and torch.equal(back(batch).concat(), qe(batch).concat())
    assert set(back.state_dict()) == {"embedding_bags.a.weight", "embedding_bags.c.weight"}  # TorchRec's keys


def test_foreign_and_damaged_files_are_refused(tmp_path):
    q = embtab.quantize(embtab.EmbeddingBag(10, 4), "int8")
    with pytest.raises(ValueError, match="holds no quantized table"):
        embtab.save_quantized(embtab.EmbeddingBag(10, 4), tmp_path / "x.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not an embtab quantized model file"):
        embtab.load_quantized(tmp_path / "other.safetensors")
    embtab.save_quantized(q, tmp_path / "q.safetensors")
    raw = (tmp_path / "q.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        embtab.load_quantized(tmp_path / "cut.safetensors")
    flipped = bytearray(raw)
    flipped[-3] ^= 0x04  # inside a tensor: the file still reads
    (tmp_path / "flip.safetensors").write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="is corrupt: its tensors do not match the checksum"):
        embtab.load_quantized(tmp_path / "flip.safetensors")
    with pytest.raises(FileNotFoundError):
        embtab.load_quantized(tmp_path / "missing.safetensors")


def test_a_float_state_dict_is_refused_by_a_quantized_table():
    q = embtab.quantize(embtab.EmbeddingBag(10, 4), "int8")
    with pytest.raises(RuntimeError, match=r"stores uint8 \(10, 12\), the state_dict holds torch.float32 \(10, 4\)"):
        q.load_state_dict(embtab.EmbeddingBag(10, 4).state_dict())


@pytest.mark.parametrize("ids", [embtab.ids.Hashed(2), embtab.ids.Dynamic()], ids=["hashed", "dynamic"])
def test_tables_with_an_id_space_are_refused_by_name(ids):
    model = torch.nn.Sequential(embtab.EmbeddingBag(50, 4, mode="sum", ids=ids))
    with pytest.raises(ValueError, match=r"table '0'.*ids=.*cannot be quantized yet"):
        embtab.quantize(model, "int8")
