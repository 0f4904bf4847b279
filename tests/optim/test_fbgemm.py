"""The collection's fused SGD and row-wise Adagrad against FBGEMM's table-batched embeddings.

FBGEMM's CPU TBE (``fbgemm-gpu-cpu``, what TorchRec trains with) is an independent
implementation of the same exact-sparse updates: after several steps on the same
batches the weights (and the row-wise state) must agree within float32 tolerance.
Skipped when fbgemm_gpu does not import (it is pinned to one torch version).
"""

from __future__ import annotations

import pytest
import torch

import embtab
from tests.conftest import assert_close

tbe_training = pytest.importorskip("fbgemm_gpu.split_table_batched_embeddings_ops_training")
tbe_common = pytest.importorskip("fbgemm_gpu.split_table_batched_embeddings_ops_common")
tbe_configs = pytest.importorskip("fbgemm_gpu.split_embedding_configs")

TABLES = [(60, 8), (25, 4), (40, 16)]  # (rows, dim): different sizes and dims
BATCH = 7


def _tbe(optimizer: object, pooling: object, lr: float, **kwargs: object):  # type: ignore[no-untyped-def]
    location, device = tbe_common.EmbeddingLocation.HOST, tbe_training.ComputeDevice.CPU
    return tbe_training.SplitTableBatchedEmbeddingBagsCodegen(
        [(rows, dim, location, device) for rows, dim in TABLES], optimizer=optimizer, learning_rate=lr,
        pooling_mode=pooling, **kwargs,
    )


@pytest.mark.parametrize("pooling", ["sum", "mean"])
@pytest.mark.parametrize("kind", ["sgd", "rowwise_adagrad"])
def test_weights_match_fbgemm_after_several_steps(kind: str, pooling: str) -> None:
    OptimType = tbe_configs.EmbOptimType
    PoolingMode = tbe_common.PoolingMode
    lr = 0.1
    if kind == "sgd":
        spec = embtab.optim.SGD(lr=lr)
        tbe = _tbe(OptimType.EXACT_SGD, getattr(PoolingMode, pooling.upper()), lr)
    else:
        spec = embtab.optim.RowWiseAdagrad(lr=lr, eps=1e-8)
        tbe = _tbe(OptimType.EXACT_ROWWISE_ADAGRAD, getattr(PoolingMode, pooling.upper()), lr, eps=1e-8)
    configs = [embtab.TableConfig(f"t{i}", rows, dim, pooling=pooling) for i, (rows, dim) in enumerate(TABLES)]
    ebc = embtab.EmbeddingBagCollection(configs, optimizer=spec)
    with torch.no_grad():
        for theirs, bag in zip(tbe.split_embedding_weights(), ebc.embedding_bags.values()):
            theirs.copy_(bag.weight)
    gen = torch.Generator().manual_seed(0)
    for step in range(6):
        features, all_ids, all_offsets = {}, [], [0]
        for i, (rows, _) in enumerate(TABLES):
            lengths = torch.randint(0, 6, (BATCH,), generator=gen)  # empty bags included
            high = 5 if step % 2 else rows  # every other step: heavy duplication
            ids = torch.randint(0, high, (int(lengths.sum()),), generator=gen)
            offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
            features[f"t{i}"] = (ids, offsets[:-1])
            all_ids.append(ids)
            all_offsets.extend((offsets[1:] + all_offsets[-1]).tolist())
        grad = torch.randn(BATCH, sum(d for _, d in TABLES), generator=gen)
        ours = ebc(features).concat()
        theirs = tbe(torch.cat(all_ids), torch.tensor(all_offsets))
        assert_close(ours, theirs)  # same weights going in
        ours.backward(grad)
        theirs.backward(grad)
    for theirs, bag in zip(tbe.split_embedding_weights(), ebc.embedding_bags.values()):
        assert_close(bag.weight.detach(), theirs)
    if kind == "rowwise_adagrad":
        for theirs, bag in zip(tbe.split_optimizer_states(), ebc.embedding_bags.values()):
            assert_close(bag.optim_sum, theirs[0])
