"""A fused optimizer bound to tables: ``torch.optim`` semantics, updates inside backward.

:class:`FusedOptimizer` is what ``module.optimizer`` (and ``collection.optimizer``) is: a
real ``torch.optim.Optimizer`` (one param group; LR schedulers drive it, its
``state_dict`` holds the hyperparameters), bound to tables whose per-row state lives in
the tables' buffers (``optim_<name>``, so a module's ``state_dict`` carries it).

The path of an update::

    lookup backward (ops/autograd.py)
        -> _deposit_bags / _deposit_rows       each lookup's row gradients, not yet summed
    end of the backward pass (an autograd engine callback)
        -> one TableJob per table               every contribution of the pass to a table merged
        -> [row-gradient hooks]                 RowGrads (distinct rows, summed gradients): the seam
        -> update backend (ops/registry.py)     run_jobs, or fused_update per table

A table looked up several times in one forward pass gets one update, equal to
``torch.optim``'s on the summed gradient. With ``update="step"`` on the spec the row
gradients wait (summed across backward passes) until :meth:`FusedOptimizer.step`.

Hooks (:meth:`FusedOptimizer.register_row_grad_hook`) see every table's ``RowGrads``
between "row gradients ready" and "apply", and may replace them: that is where a
distributed job reduces or routes row gradients.
"""

from __future__ import annotations

import contextlib
import itertools
import weakref
from collections import OrderedDict
from typing import Any, Callable, Iterable, NamedTuple, Sequence

import torch
from torch import Tensor
from torch.autograd import Variable

from ..ops import registry, update_torch
from ..ops.common import BagSource, Hyper, TableJob, acc_dtype
from .specs import FusedSpec

__all__ = ["FusedOptimizer", "RowGrads", "clip_grad_norm_"]


class RowGrads(NamedTuple):
    """One table's gradient for an update: distinct ``rows`` (U,) int64 and their summed
    ``grads`` (U, D) in the accumulation dtype (float32 for 16-bit tables). ``table`` is
    the module holding the weight, the optimizer state and the spec."""

    table: Any
    rows: Tensor
    grads: Tensor


_handles = itertools.count(1)
_by_handle: "weakref.WeakValueDictionary[int, FusedOptimizer]" = weakref.WeakValueDictionary()


class FusedOptimizer(torch.optim.Optimizer):
    """The ``torch.optim.Optimizer`` face of a fused optimizer bound to tables.

    Rows are updated when a backward pass ends (``spec.update == "backward"``, the
    default; ``step()`` then does nothing but run its closure) or at ``step()``
    (``update="step"``; ``zero_grad()`` then drops the accumulated row gradients).
    The hyperparameters live in ``param_groups[0]`` and are read at every update, so
    ``opt.param_groups[0]["lr"] = 0.1`` or a scheduler takes effect at the next one.
    Copies (``copy.deepcopy``, ``pickle``, ``torch.save`` of the model) work: a copy is
    bound to the copied tables. Row-gradient hooks are not copied (as torch's hooks).
    """

    def __init__(self, tables: Sequence[torch.nn.Module], spec: FusedSpec) -> None:
        super().__init__([t.weight for t in tables], spec.hyperparameters())
        self.spec = spec
        self.tables = list(tables)
        self._init_runtime()

    def _init_runtime(self) -> None:
        # handle id -> (hook, ids of the tables it sees, or None for every table)
        self._row_grad_hooks: OrderedDict[int, tuple[Callable[[list[RowGrads]], Any], frozenset[int] | None]] = OrderedDict()
        self._pending: list[tuple[Any, ...]] = []  # contributions of the backward pass in progress
        self._task: int | None = None  # the graph task they belong to
        self._waiting: dict[int, RowGrads] = {}  # update="step": row gradients until step()
        self._hyper_key: tuple[Any, ...] | None = None
        # clip_grad_norm_'s measure of the waiting row gradients (see set_grad_norm)
        self._grad_norm: Callable[[list[RowGrads], float], Tensor] | None = None
        self._hyper: Hyper | None = None
        self.handle = next(_handles)  # names this optimizer inside a torch.compile graph
        _by_handle[self.handle] = self

    @staticmethod
    def by_handle(handle: int) -> "FusedOptimizer":
        return _by_handle[handle]

    # --- copy, pickle -------------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.update(spec=self.spec, tables=self.tables)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._init_runtime()

    # --- torch.optim face ------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Apply the waiting row gradients (``update="step"``); call ``closure`` first if given."""
        loss = run_closure(closure)
        if self._waiting:
            waiting, self._waiting = list(self._waiting.values()), {}
            self._apply_rows(waiting, self.hyper())
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop the row gradients waiting for ``step()`` (a fused optimizer's tables never get a ``.grad``)."""
        self._waiting = {}

    def hyper(self) -> Hyper:
        """The hyperparameters of ``param_groups[0]``, checked (a scheduler may have changed them)."""
        group = self.param_groups[0]
        key = tuple(v for k, v in group.items() if k != "params")
        if key != self._hyper_key:  # checked again only when a value changed
            self._hyper, self._hyper_key = self.spec.hyper(group), key
        return self._hyper

    def register_row_grad_hook(self, hook: Callable[[list[RowGrads]], list[RowGrads] | None], *,
                               tables: Iterable[Any] | None = None) -> Any:
        """Call ``hook(row_grads)`` before every update; it may return replacements.

        ``row_grads`` lists one :class:`RowGrads` per table with gradients; with ``tables``,
        only those tables' (the other tables keep the path that sums and updates in one
        pass). A registered hook, even one for no table, also says that its owner keeps
        the processes of a distributed job in step (see ``_refuse_unsynchronized_ranks``).
        Returns a handle whose ``remove()`` unregisters the hook.
        """
        from torch.utils.hooks import RemovableHandle

        handle = RemovableHandle(self._row_grad_hooks)
        self._row_grad_hooks[handle.id] = (hook, None if tables is None else frozenset(id(t) for t in tables))
        return handle

    def set_grad_norm(self, measure: Callable[[list[RowGrads], float], Tensor]) -> None:
        """How :func:`clip_grad_norm_` measures this optimizer's waiting row gradients:
        ``measure(row_grads, norm_type) -> total norm``. A sharded collection measures them
        over every rank (its optimizer holds only this rank's pieces); the default is their
        own norm."""
        self._grad_norm = measure

    def pending_row_grads(self) -> list[RowGrads]:
        """The row gradients waiting for ``step()`` (``update="step"``); edit them in place to change the update."""
        return list(self._waiting.values())

    def __repr__(self) -> str:
        group = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        extra = ", update='step'" if self.spec.update == "step" else ""
        return f"FusedOptimizer({type(self.spec).__name__}, {group}{extra})"

    # --- from backward -----------------------------------------------------------------------------

    def _deposit_bags(self, table: Any, ids: Tensor, ends: Tensor, grad: Tensor, mean: bool,
                      psw: Tensor | None) -> None:
        """A bag lookup's gradient ``grad`` (B, D) for ``table``; ``ids`` (N,), ``ends`` (B + 1,)."""
        queued = self._enter_pass()
        self._pending.append((table, ids, ends, grad, mean, None if psw is None else psw.detach()))
        if not queued:
            self._end_of_backward()

    def _deposit_rows(self, table: Any, rows: Tensor, grads: Tensor) -> None:
        """Distinct ``rows`` of ``table`` and their summed ``grads`` (max pooling)."""
        queued = self._enter_pass()
        self._pending.append((table, rows, grads))
        if not queued:
            self._end_of_backward()

    def _enter_pass(self) -> bool:
        """Queue the update for the end of the current backward pass (once per pass).

        Returns False outside a backward pass (the caller applies at once).
        """
        if not self._row_grad_hooks:
            _refuse_unsynchronized_ranks()
        task = torch._C._current_graph_task_id()
        if task == self._task:
            return True
        # Contributions of an earlier pass that never ended (it raised) are not applied.
        self._pending = []
        self._task = task
        try:
            Variable._execution_engine.queue_callback(self._end_of_backward)
        except RuntimeError:  # not inside a backward pass
            self._task = None
            return False
        return True

    def _end_of_backward(self) -> None:
        pending, self._pending, self._task = self._pending, [], None
        if not pending:
            return
        jobs = self._jobs(pending)
        if self.spec.update == "step":
            for table, job in jobs:
                rows, grads = update_torch.reduce(job)
                self._wait(RowGrads(table, rows, grads))
            return
        hyper = self.hyper()
        if self._row_grad_hooks:
            seen = self._hooked_tables()
            hooked = [(table, job) for table, job in jobs if seen is None or id(table) in seen]
            if hooked:
                self._apply_rows([RowGrads(table, *update_torch.reduce(job)) for table, job in hooked], hyper)
            jobs = [(table, job) for table, job in jobs if seen is not None and id(table) not in seen]
            if not jobs:
                return
        with _no_grad():
            # One run_jobs call per (backend, weight dtype): every source of a pass indexes the
            # same flat gradient (see _jobs). Pre-summed rows (max pooling) go to fused_update.
            groups: dict[tuple[int, torch.dtype], tuple[Any, list[TableJob]]] = {}
            for table, job in jobs:
                update = _update_backend(table)
                if job.rows is not None:
                    rows, grads = update_torch.reduce(job) if job.sources else (job.rows, job.grads)
                    update.fused_update(job.weight, job.state, rows, grads, hyper)
                else:
                    groups.setdefault((id(update), job.weight.dtype), (update, []))[1].append(job)
            for update, group in groups.values():
                update.run_jobs(group, hyper)
        _bump_versions([job.weight for _, job in jobs])

    def _jobs(self, pending: list[tuple[Any, ...]]) -> list[tuple[Any, TableJob]]:
        """One job per table from a backward pass's contributions; bag gradients read in
        place from one flat buffer where they share storage (the column slices of a
        collection's output gradient), else copied into one."""
        bag_grads = [c[3] for c in pending if len(c) == 6]
        flat, bases, strides = flat_grads(bag_grads) if bag_grads else (None, [], [])
        jobs: dict[int, tuple[Any, TableJob]] = {}
        k = 0
        for c in pending:
            table = c[0]
            if id(table) not in jobs:
                spec = table.spec
                jobs[id(table)] = (table, TableJob(table.weight, table._optim_state(), spec.padding_idx,
                                                   spec.scale_grad_by_freq, flat))
            job = jobs[id(table)][1]
            if len(c) == 6:
                _, ids, ends, _, mean, psw = c
                job.sources.append(BagSource(ids.reshape(-1), ends, bases[k], strides[k], mean, psw))
                k += 1
            else:
                _, rows, grads = c
                if job.rows is None:
                    job.rows, job.grads = rows, grads
                else:
                    job.rows, job.grads = update_torch.merge_rows([job.rows, rows], [job.grads, grads], grads.shape[1])
        out = list(jobs.values())
        for table, job in out:
            if job.scale_grad_by_freq and len(job.sources) > 1:
                # torch scales each lookup's gradient by the counts in that lookup: reduce them one by one.
                parts = [update_torch.reduce(TableJob(job.weight, job.state, job.padding_idx, True, flat, [s]))
                         for s in job.sources]
                if job.rows is not None:
                    parts.append((job.rows, job.grads))  # type: ignore[arg-type]
                job.sources = []
                job.rows, job.grads = update_torch.merge_rows([p[0] for p in parts], [p[1] for p in parts],
                                                              job.weight.shape[1])
        return out

    def _wait(self, rg: RowGrads) -> None:
        old = self._waiting.get(id(rg.table))
        if old is not None:
            rows, grads = update_torch.merge_rows([old.rows, rg.rows], [old.grads, rg.grads], rg.grads.shape[1])
            rg = RowGrads(rg.table, rows, grads)
        self._waiting[id(rg.table)] = rg

    def _hooked_tables(self) -> frozenset[int] | None:
        """Ids of the tables some hook sees (None: every table)."""
        out: frozenset[int] = frozenset()
        for _, tables in self._row_grad_hooks.values():
            if tables is None:
                return None
            out |= tables
        return out

    def _apply_rows(self, row_grads: list[RowGrads], hyper: Hyper) -> None:
        for hook, tables in list(self._row_grad_hooks.values()):
            if tables is None:
                replaced = hook(row_grads)
                if replaced is not None:
                    row_grads = list(replaced)
            elif tables:
                replaced = hook([rg for rg in row_grads if id(rg.table) in tables])
                if replaced is not None:
                    row_grads = [rg for rg in row_grads if id(rg.table) not in tables] + list(replaced)
        with _no_grad():
            for rg in row_grads:
                table = rg.table
                _update_backend(table).fused_update(table.weight, table._optim_state(), rg.rows, rg.grads, hyper)
        _bump_versions([rg.table.weight for rg in row_grads])


def run_closure(closure: Callable[[], float] | None) -> float | None:
    """``optimizer.step(closure)``'s closure, with gradients on (as torch.optim does)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def _no_grad() -> Any:
    """``torch.no_grad()``, or nothing where grad mode is off already (a backward pass
    without create_graph): entering the context costs more than the small updates."""
    return torch.no_grad() if torch.is_grad_enabled() else contextlib.nullcontext()


def _update_backend(table: Any) -> Any:
    w = table.weight
    return registry.select(table.spec.backend, w.device, w.dtype, w.is_contiguous()).updater()


def _bump_versions(weights: Iterable[Tensor]) -> None:
    # An in-place update of a tensor autograd may have saved: let it notice.
    for w in weights:
        torch.autograd.graph.increment_version(w)


def _refuse_unsynchronized_ranks() -> None:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        raise RuntimeError(
            f"embtab: a fused optimizer in a torch.distributed job (world size {dist.get_world_size()}) "
            f"would update each rank's copy of the table from that rank's batch alone, so the copies "
            f"diverge (DistributedDataParallel does not see these updates). Shard the tables with "
            f"embtab.distributed (ed.shard / ed.DistributedModel), or drop optimizer= and use "
            f"sparse=True with a torch optimizer under DDP"
        )


def flat_grads(grads: Sequence[Tensor]) -> tuple[Tensor, list[int], list[int]]:
    """One flat buffer holding every ``(B_i, D_i)`` gradient, with each one's start and row stride.

    Column slices of one tensor (what a collection's backward hands out) are read in
    place through their shared storage; anything else is copied into one buffer.
    """
    first = grads[0]
    if len(grads) == 1 and first.dim() == 2 and first.is_contiguous():  # one lookup's own gradient
        return first.reshape(-1), [0], [first.shape[1]]
    storage = first.untyped_storage()
    shared = all(
        g.dim() == 2 and g.stride(1) == 1 and g.dtype == first.dtype and g.device == first.device
        and g.untyped_storage().data_ptr() == storage.data_ptr()
        for g in grads
    )
    if shared:
        numel = storage.nbytes() // first.element_size()
        flat = torch.empty(0, dtype=first.dtype, device=first.device).set_(storage, 0, (numel,), (1,))
        return flat, [g.storage_offset() for g in grads], [g.stride(0) for g in grads]
    dtype = first.dtype
    parts = [g.to(dtype).contiguous().reshape(-1) for g in grads]
    starts, total = [], 0
    for p in parts:
        starts.append(total)
        total += p.numel()
    flat = parts[0] if len(parts) == 1 else torch.cat(parts)
    return flat, starts, [g.shape[1] if g.dim() == 2 else 0 for g in grads]


def clip_grad_norm_(optimizer: FusedOptimizer | Iterable[FusedOptimizer], max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False) -> Tensor:
    """Clip the row gradients waiting for ``step()`` by their total norm, as
    ``torch.nn.utils.clip_grad_norm_`` does for ``.grad``; returns the total norm.

    Needs ``update="step"`` on the spec (otherwise the rows were updated in backward
    already). The norm is over every waiting row gradient of the optimizer(s). For a
    sharded collection's optimizer (``embtab.distributed``) it is over every rank's, as one
    process would measure it: call it on every rank (it all-reduces).
    """
    optimizers = [optimizer] if isinstance(optimizer, FusedOptimizer) else list(optimizer)
    grads: list[Tensor] = []
    norms: list[Tensor] = []
    for opt in optimizers:
        if not isinstance(opt, FusedOptimizer):
            raise TypeError(f"clip_grad_norm_: expected embtab fused optimizers, got {type(opt).__name__}")
        if opt.spec.update != "step":
            raise ValueError(
                "clip_grad_norm_: this fused optimizer updates the rows during backward, so there is "
                f"nothing left to clip; build it with update='step' (e.g. embtab.optim.{type(opt.spec).__name__}"
                "(..., update='step')) and call optimizer.step() after clipping"
            )
        pending = opt.pending_row_grads()
        grads += [rg.grads for rg in pending]
        if opt._grad_norm is not None:  # called even with nothing waiting here: other ranks may have some
            norms.append(opt._grad_norm(pending, norm_type))
        else:
            norms += [torch.linalg.vector_norm(rg.grads.to(acc_dtype(rg.grads.dtype)), norm_type) for rg in pending]
    if not norms:
        return torch.tensor(0.0)
    total = torch.linalg.vector_norm(torch.stack([n.to(norms[0].device) for n in norms]), norm_type)
    if error_if_nonfinite and not bool(torch.isfinite(total)):
        raise RuntimeError(f"clip_grad_norm_: the total norm of order {norm_type} of the row gradients is {total}")
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.to(g.device, g.dtype))
    return total
