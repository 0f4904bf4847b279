"""embtab modules under torch's DistributedDataParallel (gloo, 2 ranks)."""

from __future__ import annotations

from . import _cases
from ._spawn import run


def test_sparse_modules_train_under_ddp_as_torch_modules() -> None:
    # DDP decides which parameters have sparse gradients by isinstance(module, torch.nn.Embedding /
    # EmbeddingBag); embtab's modules are subclasses of those, so it buckets their gradients as sparse.
    run(2, _cases.ddp_sparse_like_torch)


def test_plain_ddp_around_a_fused_optimizer_raises_pointing_to_shard() -> None:
    run(2, _cases.ddp_refuses_fused)


def test_distributed_model_trains_as_one_process() -> None:
    run(2, _cases.distributed_model)
