"""Compile every Triton kernel the launchers produce for a real GPU, without a GPU.

The interpreter (``TRITON_INTERPRET=1``) checks what the kernels compute, but not that
they compile: it accepts Python the Triton compiler refuses (non-constexpr globals,
loop-carried values that change type, ...). This script runs the launchers on small
CPU tensors with ``JITFunction.run`` replaced by a recorder, then compiles each
recorded specialisation ahead of time for an H100/H200 (``sm_90``, through PTX to a
cubin with the ptxas shipped in Triton's wheel). Run it with TRITON_INTERPRET unset::

    python tests/ops/aot_compile.py [--arch 90] [--quick] [--dims 16,128,1000] [--only NAME]

It prints one line per compiled kernel (registers, spills, shared memory) and exits
non-zero if any fails, or if it recorded no kernel at all (nothing was checked).
Not part of the test suite (it needs Triton's compiler, minutes, and no interpreter);
run it by hand before a GPU session (see the README's Development section).

It compiles with the Triton of the interpreter that runs it, and finds ``embtab`` in
this checkout's ``src/`` when that interpreter has none installed, so another Triton
release can be checked from a throwaway venv outside the repo. Compilers differ:
Triton 3.6 (the release in some GPU images) refused kernels that 3.9 compiled, so
check the oldest one in use too, e.g.::

    python3 -m venv /tmp/t36 && /tmp/t36/bin/pip install -c /dev/null torch==2.13.0 triton==3.6.0 numpy
    env -u TRITON_INTERPRET /tmp/t36/bin/python tests/ops/aot_compile.py --quick

Layouts, and so the compiler's paths, depend on the tile shapes: ``--dims`` sweeps
embedding dims (default 128; ``1,16,64,100,128,256,1000,2048`` takes ~10 minutes on
2 cores).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any
from unittest import mock

import torch

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("aot_compile.py: unset TRITON_INTERPRET (the interpreter compiles nothing)")

try:  # the repo's venv has embtab installed; another interpreter uses this checkout's
    import embtab  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "src"))

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

_TYPES = {
    torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
    torch.int64: "i64", torch.int32: "i32", torch.int8: "i8", torch.bool: "i1",
}
_OPTIONS = ("num_warps", "num_stages", "num_ctas")

recorded: dict[str, tuple[JITFunction, dict[str, str], dict[str, Any], dict[Any, Any], dict[str, Any]]] = {}


def _record(self: JITFunction, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> None:
    """Stand-in for JITFunction.run: note the signature and constexprs, launch nothing."""
    options = {k: kwargs.pop(k) for k in list(kwargs) if k in _OPTIONS}
    bound = dict(zip(self.arg_names, args))
    bound.update(kwargs)
    signature, constexprs, attrs = {}, {}, {}
    for i, param in enumerate(self.params):
        value = bound[param.name]
        # What the runtime's specialisation would assume: 16-byte aligned tensors (fresh
        # allocations are) and integers divisible by 16 when they are.
        aligned = False
        if param.is_constexpr:
            signature[param.name] = "constexpr"
            constexprs[param.name] = value
        elif isinstance(value, torch.Tensor):
            signature[param.name] = "*" + _TYPES[value.dtype]
            aligned = value.data_ptr() % 16 == 0
        elif isinstance(value, bool):
            signature[param.name] = "i1"
        elif isinstance(value, int):
            signature[param.name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            aligned = value % 16 == 0
        elif isinstance(value, float):
            signature[param.name] = "fp32"
        else:
            raise TypeError(f"{self.__name__}: cannot type argument {param.name}={value!r}")
        if aligned and not param.do_not_specialize:
            attrs[(i,)] = [["tt.divisibility", 16]]
    key = f"{self.__name__}[{', '.join(f'{k}={v}' for k, v in constexprs.items())}]"
    recorded.setdefault(key, (self, signature, constexprs, attrs, options))


def exercise(quick: bool, dims: list[int]) -> None:
    """Call every launcher over the dtypes / modes / optimizers that select distinct kernels."""
    from embtab import optim
    from embtab.ops import reference as R
    from embtab.ops.common import KINDS, BagSource, Hyper, TableJob
    from embtab.ops.triton import backward as BW
    from embtab.ops.triton import embedding as E
    from embtab.ops.triton import embedding_bag as EB
    from embtab.ops.triton import fused_optim as FO
    from embtab.ops.triton import pooled as P
    from embtab.ops.triton import renorm as RN
    from embtab.optim.specs import new_state

    dtypes = [torch.float32, torch.bfloat16] if quick else [torch.float32, torch.float64, torch.float16, torch.bfloat16]
    ids = torch.tensor([1, 3, 3, 0, 5, 2, 2, 2])
    offsets = torch.tensor([0, 3, 3, 8])
    for dim, dtype in ((d, t) for d in dims for t in dtypes):
        w = torch.randn(8, dim).to(dtype)  # D=128, the rec shape's: shows the vector widths
        E.embedding_forward(w, ids)
        grad = torch.randn(8, dim).to(dtype)
        for det in (False, True):
            BW.scatter_rows(grad, ids, 8, deterministic=det, freq=True, padding_idx=2)
        E.embedding_backward(grad, ids, 8, 2, False, True)
        for mode in ("sum", "mean", "max"):
            psw = torch.randn(8).to(dtype) if mode == "sum" else None
            out, aux = EB.embedding_bag_forward(w, ids, offsets, mode, psw, None)
            _, aux_r = R.embedding_bag_forward(w, ids, offsets, mode, psw, None)
            EB.embedding_bag_backward(out, w, ids, offsets, aux, mode, psw, None, False, False, True, psw is not None)
        for norm in (2.0, 1.0, float("inf"), 3.0):
            RN.renorm_(w, ids, 1.0, norm)
        # The table-batched lookup: one kernel for every mode, policy and input form.
        w2 = torch.randn(8, max(dim // 2, 1)).to(dtype)
        P.pooled_forward([w, w2, w], [ids, ids, ids.reshape(4, 2)], [offsets[:-1], offsets, None], [0, 0, 2],
                         ["sum", "max", "mean"], [None, 2, 0], [("error", 8, 0), ("hash", 6, 2), ("zero", 8, 0)],
                         [torch.randn(8).to(dtype), None, None], [True, False, False], 3)
        for kind in KINDS:
            hyper = Hyper(kind, 0.1, 1e-8, 0.9, 0.999, 0.0)
            spec = {"sgd": optim.SGD(), "adagrad": optim.Adagrad(), "rowwise_adagrad": optim.RowWiseAdagrad(),
                    "adam": optim.Adam(), "adamw": optim.AdamW()}[kind]
            state = new_state(spec, w)
            FO.fused_update(w, state, torch.tensor([1, 4]), torch.randn(2, dim), hyper)
            source = BagSource(ids, torch.arange(9), 0, dim)
            job = TableJob(w, state, None, kind == "adagrad", grad.reshape(-1), [source])
            mean = BagSource(ids, offsets, 0, dim, mean=True)  # per-occurrence scale
            job_mean = TableJob(w, state, None, kind == "adagrad", grad.reshape(-1), [mean])
            for det in (False, True):
                # LOG2_T = 0 (a single module), 1, 2; HAS_SCALE both ways.
                for batch in ([job], [job_mean], [job, job], [job, job, job_mean]):
                    FO.batched_update(batch, hyper, deterministic=det)


def _resource_usage(cubin: bytes) -> str:
    """Registers and spills of a compiled kernel (cuobjdump from Triton's wheel)."""
    tool = shutil.which("cuobjdump", path=os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin"))
    if tool is None:
        return "cuobjdump not found"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        out = subprocess.run([tool, "-res-usage", path], capture_output=True, text=True).stdout
    regs = re.search(r"REG:(\d+)", out)
    stack = re.search(r"STACK:(\d+)", out)
    return f"regs {regs.group(1) if regs else '?'}, stack {stack.group(1) if stack else '?'} B"


def _widths(ptx: str, op: str) -> str:
    """The vector widths of the global loads / stores in a PTX module, e.g. 'v4.b32 b64'."""
    found = sorted(set(re.findall(rf"{op}\.global(?:\.\w+)*?\.((?:v\d\.)?[bfsu]\d+)\b", ptx)))
    return " ".join(found) or "-"


def compile_all(arch: int) -> int:
    target = GPUTarget("cuda", arch, 32)
    failures = 0
    for key, (fn, signature, constexprs, attrs, options) in sorted(recorded.items()):
        start = time.perf_counter()
        try:
            kernel = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options)
        except Exception as exc:  # report every kernel, then fail
            failures += 1
            print(f"FAIL {key}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            continue
        ptx = kernel.asm["ptx"]
        print(f"ok   {key}: {time.perf_counter() - start:.1f}s, warps {kernel.metadata.num_warps}, "
              f"{_resource_usage(kernel.asm['cubin'])}, ld {_widths(ptx, 'ld')}, st {_widths(ptx, 'st')}")
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 for H100/H200")
    parser.add_argument("--quick", action="store_true", help="float32 and bfloat16 only")
    parser.add_argument("--dims", default="128", help="comma-separated embedding dims to exercise (default 128)")
    parser.add_argument("--only", default="", help="compile only the specialisations whose name contains this")
    args = parser.parse_args(argv)
    print(f"triton {triton.__version__}, torch {torch.__version__}, {sys.executable}", flush=True)
    JITFunction.run = _record  # type: ignore[method-assign]
    exercise(args.quick, [int(d) for d in args.dims.split(",")])
    for key in [k for k in recorded if args.only not in k]:
        del recorded[key]
    print(f"{len(recorded)} kernel specialisations recorded", flush=True)
    if not recorded:
        print("no kernel was recorded: nothing checked", flush=True)
        return 1
    failures = compile_all(args.arch)
    print(f"{failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
