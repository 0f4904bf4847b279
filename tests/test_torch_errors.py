"""Where torch refuses an input, embtab refuses it with an instance of torch's exception
class for that case, and a message that contains torch's phrase (and still names the value).

Each case runs the same call through torch and through embtab: torch's exception class and
message are the oracle, read at test time, not written down here.
"""

from __future__ import annotations

import re
from typing import Callable

import pytest
import torch
import torch.nn.functional as F

import embtab
from embtab import functional as EF

W = torch.randn(10, 3)
IDS = torch.tensor([1, 2, 3, 4])

# (case, torch's call, embtab's call, phrase of torch's message that ours must contain)
CASES: list[tuple[str, Callable[[], object], Callable[[], object], str]] = [
    ("bag offsets[0] != 0", lambda: F.embedding_bag(IDS, W, torch.tensor([1, 2])),
     lambda: EF.embedding_bag(IDS, W, torch.tensor([1, 2])), "offsets[0] has to be 0"),
    ("bag offsets past the end", lambda: F.embedding_bag(IDS, W, torch.tensor([0, 7])),
     lambda: EF.embedding_bag(IDS, W, torch.tensor([0, 7])), "offsets[-1] can not be greater than input's length"),
    ("bag module offsets[0] != 0", lambda: torch.nn.EmbeddingBag(10, 3)(IDS, torch.tensor([1, 2])),
     lambda: embtab.EmbeddingBag(10, 3)(IDS, torch.tensor([1, 2])), "offsets[0] has to be 0"),
    ("bag id out of range", lambda: F.embedding_bag(IDS + 7, W, torch.tensor([0, 2])),
     lambda: EF.embedding_bag(IDS + 7, W, torch.tensor([0, 2])), ""),
    ("bag id out of range, padding", lambda: F.embedding_bag(IDS + 7, W, torch.tensor([0, 2]), padding_idx=0),
     lambda: EF.embedding_bag(IDS + 7, W, torch.tensor([0, 2]), padding_idx=0), "Expected idx >= 0 && idx < num_embeddings"),
    ("embedding id out of range", lambda: F.embedding(IDS + 7, W),
     lambda: EF.embedding(IDS + 7, W), "index out of range in self"),
    ("float ids", lambda: F.embedding(IDS.float(), W), lambda: EF.embedding(IDS.float(), W),
     "Expected tensor for argument #1 'indices' to have one of the following scalar types: Long, Int"),
    ("psw dtype", lambda: F.embedding_bag(IDS, W, torch.tensor([0]), mode="sum", per_sample_weights=torch.ones(4).double()),
     lambda: EF.embedding_bag(IDS, W, torch.tensor([0]), mode="sum", per_sample_weights=torch.ones(4).double()),
     "to have the same type as tensor for argument #1 'per_sample_weights'"),
    ("psw shape", lambda: F.embedding_bag(IDS, W, torch.tensor([0]), mode="sum", per_sample_weights=torch.ones(3)),
     lambda: EF.embedding_bag(IDS, W, torch.tensor([0]), mode="sum", per_sample_weights=torch.ones(3)),
     "same shape as the input"),
    ("psw with mean", lambda: F.embedding_bag(IDS, W, torch.tensor([0]), mode="mean", per_sample_weights=torch.ones(4)),
     lambda: EF.embedding_bag(IDS, W, torch.tensor([0]), mode="mean", per_sample_weights=torch.ones(4)),
     "only supported for mode='sum'"),
    ("functional padding_idx", lambda: F.embedding(IDS, W, padding_idx=10), lambda: EF.embedding(IDS, W, padding_idx=10),
     "Padding_idx must be within num_embeddings"),
    ("functional bag padding_idx", lambda: F.embedding_bag(IDS, W, torch.tensor([0]), padding_idx=10),
     lambda: EF.embedding_bag(IDS, W, torch.tensor([0]), padding_idx=10), "padding_idx must be within the number of embeddings"),
    ("module padding_idx", lambda: torch.nn.Embedding(10, 3, padding_idx=25),
     lambda: embtab.Embedding(10, 3, padding_idx=25), "Padding_idx must be within num_embeddings"),
    ("bag module padding_idx", lambda: torch.nn.EmbeddingBag(4, 3, padding_idx=4),
     lambda: embtab.EmbeddingBag(4, 3, padding_idx=4), "padding_idx must be within num_embeddings"),
    ("weight not 2-D", lambda: F.embedding(IDS, torch.tensor(1.0)), lambda: EF.embedding(IDS, torch.tensor(1.0)),
     "'weight' must be 2-D"),
    ("bag weight not 2-D", lambda: F.embedding_bag(IDS, torch.randn(10, 3, 2), torch.tensor([0])),
     lambda: EF.embedding_bag(IDS, torch.randn(10, 3, 2), torch.tensor([0])), "weight has to be a 2D Tensor"),
    ("from_pretrained 1-D", lambda: torch.nn.Embedding.from_pretrained(torch.rand(4)),
     lambda: embtab.Embedding.from_pretrained(torch.rand(4)), "Embeddings parameter is expected to be 2-dimensional"),
    ("negative size", lambda: torch.nn.Embedding(-1, 3), lambda: embtab.Embedding(-1, 3),
     "Trying to create tensor with negative dimension"),
    ("bag input 3-D", lambda: F.embedding_bag(IDS.reshape(1, 2, 2), W), lambda: EF.embedding_bag(IDS.reshape(1, 2, 2), W),
     "input has to be 1D or 2D Tensor"),
    ("bag offsets 2-D", lambda: F.embedding_bag(IDS, W, torch.tensor([[0, 2]])),
     lambda: EF.embedding_bag(IDS, W, torch.tensor([[0, 2]])), "offsets has to be a 1D Tensor"),
    ("bag without offsets", lambda: F.embedding_bag(IDS, W), lambda: EF.embedding_bag(IDS, W),
     "offsets has to be a 1D Tensor but got None"),
    ("bag mode", lambda: F.embedding_bag(IDS, W, torch.tensor([0]), mode="median"),
     lambda: EF.embedding_bag(IDS, W, torch.tensor([0]), mode="median"), "mode has to be one of sum, mean or max"),
    ("max with sparse", lambda: F.embedding_bag(IDS, W, torch.tensor([0]), mode="max", sparse=True),
     lambda: EF.embedding_bag(IDS, W, torch.tensor([0]), mode="max", sparse=True), "max mode does not support sparse weights"),
    ("integer weight in a bag", lambda: F.embedding_bag(IDS, W.long(), torch.tensor([0])),
     lambda: EF.embedding_bag(IDS, W.long(), torch.tensor([0])), "Half, BFloat16, Float, Double"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_our_error_is_an_instance_of_torchs_and_carries_its_phrase(case: tuple) -> None:
    _, torch_call, ours, phrase = case
    with pytest.raises(Exception) as theirs:
        torch_call()
    torch_class = type(theirs.value)
    with pytest.raises(torch_class) as got:  # code written as `except <torch's class>:` still catches ours
        ours()
    if phrase:
        assert phrase in str(theirs.value)  # the phrase is torch's own (this torch)
        assert phrase in str(got.value), f"{str(got.value)!r} lacks torch's phrase {phrase!r}"
        assert not str(got.value).startswith(phrase)  # ours still leads with where and what


def test_the_error_classes_keep_their_embtab_bases() -> None:
    """Code written for embtab (ValueError / TypeError / IndexError) keeps working too."""
    with pytest.raises(ValueError):
        EF.embedding_bag(IDS, W, torch.tensor([1, 2]))
    with pytest.raises(IndexError):
        EF.embedding_bag(IDS + 7, W, torch.tensor([0, 2]))
    with pytest.raises(TypeError):
        EF.embedding(IDS.float(), W)
    with pytest.raises(ValueError, match=re.escape("[-10, 9], got padding_idx=10")):
        embtab.Embedding(10, 3, padding_idx=10)
