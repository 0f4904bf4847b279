"""Quantized pooled lookups on CPU: embtab int8/int4 vs torch's quantized ops, FBGEMM's TBE and float32.

T tables of E x D rows, batch B, L uniform ids per bag, sum pooling, inference (no
gradient). In one run, timed round-robin (one call of each per round):

- embtab: a quantized ``EmbeddingBagCollection`` of the T tables (``embtab.quantize``),
  one forward for all tables, int8 and int4;
- torch: ``torch.ops.quantized.embedding_bag_byte_rowwise_offsets`` /
  ``embedding_bag_4bit_rowwise_offsets`` (the ``torch.ao`` path), one call per table,
  on the same bytes as embtab's tables;
- FBGEMM: ``IntNBitTableBatchedEmbeddingBagsCodegen`` (its CPU inference TBE), all
  tables in one call, INT8 and INT4 (random rows: its own row layout);
- float32: ``torch.nn.EmbeddingBag`` (ATen), one call per table.

Prints ms for all T tables and per table (p50 [p20, p80]), and the ratios the issue
asks for: embtab int8 against the fastest of the three baselines, embtab int4 against
embtab int8.

    python benchmarks/bench_quantized.py                  # 8 x 1,000,000 x 64, B 2048, L 20
    python benchmarks/bench_quantized.py --rows 100000    # a smaller, quicker run

Needs about 4 GB of RAM at the default size (float32 tables 2 GB, quantized copies,
FBGEMM's own).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import add_table_args, interleaved_ms, machine_info, print_table  # noqa: E402

import embtab  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_table_args(parser, rounds=15, warmup=3)
    args = parser.parse_args(argv)
    T, E, D, B, L = args.tables, args.rows, args.dim, args.batch, args.bag
    print(machine_info())
    print(f"{T} tables x {E:,} rows x {D}, batch {B}, {L} uniform ids per bag, sum pooling, no gradient\n")

    gen = torch.Generator().manual_seed(0)
    names = [f"t{t}" for t in range(T)]
    ebc = embtab.EmbeddingBagCollection([embtab.TableConfig(n, E, D) for n in names])
    q8 = embtab.quantize(ebc, "int8")
    q4 = embtab.quantize(ebc, "int4")
    floats = [torch.nn.EmbeddingBag(E, D, mode="sum", _weight=ebc.embedding_bags[n].weight.detach()) for n in names]
    ids = [torch.randint(0, E, (B * L,), generator=gen) for _ in names]
    offsets = torch.arange(0, B * L, L)
    batch = {n: (i, offsets) for n, i in zip(names, ids)}
    bytes8 = [q8.embedding_bags[n].weight for n in names]
    bytes4 = [q4.embedding_bags[n].weight for n in names]

    def torch_op(op, tables):  # type: ignore[no-untyped-def]
        def run() -> list[torch.Tensor]:
            return [op(w, i, offsets, False, 0, False, None, None, False) for w, i in zip(tables, ids)]
        return run

    fns = {
        "embtab int8 (collection)": lambda: q8(batch).concat(),
        "embtab int4 (collection)": lambda: q4(batch).concat(),
        "torch quantized byte op": torch_op(torch.ops.quantized.embedding_bag_byte_rowwise_offsets, bytes8),
        "torch quantized 4bit op": torch_op(torch.ops.quantized.embedding_bag_4bit_rowwise_offsets, bytes4),
        "float32 EmbeddingBag": lambda: [bag(i, offsets) for bag, i in zip(floats, ids)],
    }
    # The same results from embtab and torch on the same bytes (a benchmark of wrong answers is no benchmark).
    for ours, theirs in ((q8, bytes8), (q4, bytes4)):
        op = (torch.ops.quantized.embedding_bag_byte_rowwise_offsets if ours is q8
              else torch.ops.quantized.embedding_bag_4bit_rowwise_offsets)
        torch.testing.assert_close(ours(batch).concat(), torch.cat(torch_op(op, theirs)(), 1), atol=1e-3, rtol=1e-4)

    try:
        from fbgemm_gpu.split_embedding_configs import SparseType
        from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation, PoolingMode
        from fbgemm_gpu.split_table_batched_embeddings_ops_inference import IntNBitTableBatchedEmbeddingBagsCodegen

        tbe_ids = torch.cat(ids).to(torch.int32)
        tbe_offsets = torch.arange(0, T * B * L + 1, L, dtype=torch.int32)
        for label, sparse_type in (("FBGEMM TBE int8", SparseType.INT8), ("FBGEMM TBE int4", SparseType.INT4)):
            tbe = IntNBitTableBatchedEmbeddingBagsCodegen(
                [("", E, D, sparse_type, EmbeddingLocation.HOST)] * T, device="cpu", pooling_mode=PoolingMode.SUM,
                output_dtype=SparseType.FP32)
            tbe.fill_random_weights()
            fns[label] = (lambda m: lambda: m(tbe_ids, tbe_offsets))(tbe)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        print(f"fbgemm_gpu does not import ({exc}); FBGEMM rows skipped", file=sys.stderr)

    with torch.no_grad():
        times = interleaved_ms(fns, warmup=args.warmup, repeat=args.rounds)
    rows = [(name, f"{p50:.2f} [{p20:.2f}, {p80:.2f}]", f"{p50 / T:.3f}") for name, (p50, p20, p80) in times.items()]
    print_table(["lookup", f"ms, all {T} tables: p50 [p20, p80]", "ms per table"], rows)

    baselines = {k: times[k][0] for k in ("torch quantized byte op", "FBGEMM TBE int8", "float32 EmbeddingBag")
                 if k in times}
    fastest = min(baselines, key=baselines.get)  # type: ignore[arg-type]
    int8, int4 = times["embtab int8 (collection)"][0], times["embtab int4 (collection)"][0]
    print()
    print_table(["goal", "measured", "verdict"], [
        (f"embtab int8 at least as fast as the fastest baseline ({fastest})",
         f"{baselines[fastest] / int8:.2f}x ({int8:.2f} vs {baselines[fastest]:.2f} ms)",
         "met" if int8 <= baselines[fastest] else "MISSED"),
        ("embtab int4 within 1.1x of embtab int8", f"{int4 / int8:.2f}x", "met" if int4 <= 1.1 * int8 else "MISSED"),
    ])
    return 0


if __name__ == "__main__":
    sys.exit(main())
