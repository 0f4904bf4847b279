"""Checkpoints: weights, optimizer state, RNG states and loop state in one safetensors file.

One file per checkpoint, written atomically (temp file, fsync, rename), so a run killed
at any moment, ``kill -9`` included, leaves either the previous complete checkpoint or
the new one, never half of one. Tensors (the model's ``state_dict``, which holds the
fused optimizers' per-row state, the ``torch.optim`` optimizers' tensors, the RNG
states) are safetensors tensors; everything else (loop state, optimizer
hyperparameters, step counts) is JSON in the safetensors metadata, with a format name
and version so that a foreign or corrupt file is rejected with a clear error, and the
sha256 of the tensor data, so that a bit flipped inside a tensor is too.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._io import SAFETENSORS_DTYPES, check_safetensors_data, write_safetensors
from .common import AppError, resume_command

FORMAT_NAME = "embtab.checkpoint"
FORMAT_VERSION = 1
WEIGHTS_FORMAT_NAME = "embtab.weights"


def _tensor_for_file(t: Tensor) -> Tensor:
    # Dense, contiguous, on the CPU: what write_safetensors streams (no copy when already so).
    if t.is_sparse:
        t = t.to_dense()
    return t.detach().cpu().contiguous()


def _write(path: str | os.PathLike[str], tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    entries = [
        (name, SAFETENSORS_DTYPES[str(t.dtype).removeprefix("torch.")], tuple(t.shape),
         t.reshape(-1).view(torch.uint8).numpy())
        for name, t in tensors.items()
    ]
    write_safetensors(path, entries, metadata, checksum=True)


# Files whose tensors matched their checksum, by (inode, size, mtime): a resume checks the last
# checkpoint before any slow work and then loads it; the file is hashed once. (A checkpoint is
# replaced by a rename, so a new one is a new inode.)
_verified: set[tuple[int, int, int]] = set()


def _check_data(path: Path, meta: dict[str, str], what: str) -> None:
    st = path.stat()
    key = (st.st_ino, st.st_size, st.st_mtime_ns)
    if key in _verified:
        return
    problem = check_safetensors_data(path, meta)
    if problem is not None:
        raise AppError(f"{what} {str(path)!r} is corrupt: {problem}")
    _verified.add(key)


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` read.

    Attributes:
        model_state: the model's ``state_dict``.
        optimizer_states: ``torch.optim`` ``state_dict`` per optimizer name.
        state: the training loop's JSON state (epoch, history, best score, ...).
        rng: RNG states (see :func:`restore_rng`).
    """

    path: Path
    model_state: dict[str, Tensor]
    optimizer_states: dict[str, dict[str, Any]]
    state: dict[str, Any]
    rng: dict[str, Any]


def capture_rng(generator: torch.Generator | None = None) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The torch, numpy and Python RNG states (and ``generator``'s): (tensors, JSON)."""
    tensors = {"rng/torch": torch.get_rng_state()}
    if generator is not None:
        tensors["rng/generator"] = generator.get_state()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng/numpy_keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, internal, gauss = random.getstate()
    meta = {"numpy": [name, int(pos), int(has_gauss), float(cached)], "python": [version, list(internal), gauss]}
    return tensors, meta


def restore_rng(ckpt: Checkpoint, generator: torch.Generator | None = None) -> None:
    """Put back the RNG states saved by :func:`save_checkpoint`."""
    rng = ckpt.rng
    torch.set_rng_state(rng["torch"])
    if generator is not None and "generator" in rng:
        generator.set_state(rng["generator"])
    if "numpy_keys" in rng and "numpy" in rng["json"]:
        name, pos, has_gauss, cached = rng["json"]["numpy"]
        np.random.set_state((name, rng["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    if "python" in rng["json"]:
        version, internal, gauss = rng["json"]["python"]
        random.setstate((version, tuple(internal), gauss))


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: torch.nn.Module,
    optimizers: dict[str, torch.optim.Optimizer],
    state: dict[str, Any],
    generator: torch.Generator | None = None,
) -> None:
    """Write a complete training checkpoint to ``path``, atomically."""
    tensors: dict[str, Tensor] = {f"model/{k}": _tensor_for_file(v) for k, v in model.state_dict().items()}
    optim_meta: dict[str, Any] = {}
    for name, opt in optimizers.items():
        sd = opt.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        tensor_keys: dict[str, list[str]] = {}
        for pid, entry in sd["state"].items():
            for key, value in entry.items():
                if isinstance(value, Tensor):
                    tensors[f"optim/{name}/{pid}/{key}"] = _tensor_for_file(value)
                    tensor_keys.setdefault(str(pid), []).append(key)
                else:
                    scalars.setdefault(str(pid), {})[key] = value
        optim_meta[name] = {"param_groups": sd["param_groups"], "scalars": scalars, "tensor_keys": tensor_keys}
    rng_tensors, rng_json = capture_rng(generator)
    tensors.update(rng_tensors)
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "state": json.dumps(state),
        "optimizers": json.dumps(optim_meta),
        "rng": json.dumps(rng_json),
    }
    _write(path, tensors, metadata)


def _open(path: Path, what: str) -> tuple[dict[str, str], dict[str, Tensor]]:
    from safetensors import safe_open

    if not path.is_file():
        raise AppError(f"{what} not found: {str(path)!r}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for a damaged header
        raise AppError(f"{what} {str(path)!r} is not a readable safetensors file ({exc}); it is corrupt") from None
    _check_data(path, meta, what)
    return meta, tensors


def _metadata(path: Path, expected: str, what: str) -> dict[str, str]:
    """The metadata of a checkpoint or weights file, without reading its tensors."""
    from safetensors import safe_open

    if not path.is_file():
        raise AppError(f"{what} not found: {str(path)!r}")
    try:
        with safe_open(str(path), framework="pt") as f:  # checks that the file is whole
            meta = f.metadata() or {}
    except Exception as exc:
        raise AppError(f"{what} {str(path)!r} is not a readable safetensors file ({exc}); it is corrupt") from None
    _check_format(meta, expected, path, what)
    _check_data(path, meta, what)
    return meta


def _json_meta(meta: dict[str, str], key: str, path: Path, what: str) -> Any:
    try:
        return json.loads(meta[key])
    except (KeyError, json.JSONDecodeError) as exc:
        raise AppError(f"{what} {str(path)!r} has damaged metadata ({exc})") from None


def saved_epoch(run_dir: Path) -> int | None:
    """The last complete epoch saved in ``run_dir`` (``None``: none, or unreadable)."""
    try:
        meta = _metadata(Path(run_dir) / "checkpoints" / "last.safetensors", FORMAT_NAME, "checkpoint")
        return int(_json_meta(meta, "state", Path(run_dir), "checkpoint")["epoch"])
    except (AppError, KeyError, TypeError, ValueError):
        return None


def resumable_state(run_dir: Path, *, app: str, from_best: bool, start_over: str) -> dict[str, Any] | None:
    """The loop state a resumed run goes on from (``None``: no epoch saved, it starts from
    the beginning), checked before any slow work; a damaged checkpoint is an
    :class:`AppError` that says what can be done, with the commands to do it."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    last, best = ckpt_dir / "last.safetensors", ckpt_dir / "best.safetensors"
    resume = resume_command(app, run_dir)

    def best_info() -> dict[str, Any]:
        meta = _metadata(best, WEIGHTS_FORMAT_NAME, "weights file")
        info = _json_meta(meta, "info", best, "weights file")
        if not isinstance(info, dict) or not isinstance(info.get("epoch"), int):
            raise AppError(f"weights file {str(best)!r} does not say which epoch it holds")
        return info

    if from_best:
        try:
            info = best_info()
        except AppError as exc:
            raise AppError(f"{exc}; nothing to go on from: start over in a new folder: {start_over}") from None
        return info.get("state") or {"epoch": info["epoch"]}
    if not last.is_file():
        return None
    try:
        meta = _metadata(last, FORMAT_NAME, "checkpoint")
        state = _json_meta(meta, "state", last, "checkpoint")
        if not isinstance(state, dict) or not isinstance(state.get("epoch"), int):
            raise AppError(f"checkpoint {str(last)!r} has damaged metadata (no epoch)")
        return state
    except AppError as exc:
        options = []
        try:
            info = best_info()
            score = ", ".join(f"validation {k} {v:.4f}" for k, v in info.items()
                              if isinstance(v, float))
            options.append(f"go on from the best epoch ({info['epoch']}{'; ' + score if score else ''}; the "
                           f"optimizer state starts afresh, so the metrics will differ from an uninterrupted "
                           f"run): {resume} --from-best")
        except AppError:
            pass
        options.append(f"start over in a new folder: {start_over}")
        raise AppError(f"{exc}. What can be done: " + "; or ".join(options)) from None


def _check_format(meta: dict[str, str], expected: str, path: Path, what: str) -> None:
    if meta.get("format") != expected:
        raise AppError(
            f"{what} {str(path)!r} is not an {expected} file (format {meta.get('format')!r}); "
            f"it was not written by this program"
        )
    version = meta.get("format_version", "")
    if not version.isdigit() or int(version) > FORMAT_VERSION:
        raise AppError(
            f"{what} {str(path)!r} has format version {version!r}; this embtab reads up to "
            f"{FORMAT_VERSION}: upgrade embtab"
        )


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`; reject foreign or corrupt files."""
    path = Path(path)
    meta, tensors = _open(path, "checkpoint")
    _check_format(meta, FORMAT_NAME, path, "checkpoint")
    try:
        state = json.loads(meta["state"])
        optim_meta = json.loads(meta["optimizers"])
        rng_json = json.loads(meta["rng"])
    except (KeyError, json.JSONDecodeError) as exc:
        raise AppError(f"checkpoint {str(path)!r} has damaged metadata ({exc})") from None
    model_state = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    optimizer_states: dict[str, dict[str, Any]] = {}
    for name, om in optim_meta.items():
        st: dict[int, dict[str, Any]] = {}
        for pid, entries in om["scalars"].items():
            st.setdefault(int(pid), {}).update(entries)
        for pid, keys in om["tensor_keys"].items():
            for key in keys:
                st.setdefault(int(pid), {})[key] = tensors[f"optim/{name}/{pid}/{key}"]
        optimizer_states[name] = {"state": st, "param_groups": om["param_groups"]}
    rng: dict[str, Any] = {k[len("rng/"):]: v for k, v in tensors.items() if k.startswith("rng/")}
    rng["json"] = rng_json
    return Checkpoint(path, model_state, optimizer_states, state, rng)


def restore(ckpt: Checkpoint, model: torch.nn.Module, optimizers: dict[str, torch.optim.Optimizer]) -> None:
    """Load a checkpoint's weights and optimizer states into ``model`` and ``optimizers``."""
    try:
        model.load_state_dict(ckpt.model_state)
    except RuntimeError as exc:
        raise AppError(
            f"checkpoint {str(ckpt.path)!r} does not fit this model ({str(exc).splitlines()[0]}); "
            f"was the run folder's config.json changed?"
        ) from None
    missing = set(optimizers) - set(ckpt.optimizer_states)
    if missing:
        raise AppError(f"checkpoint {str(ckpt.path)!r} has no state for optimizer(s) {sorted(missing)}")
    for name, opt in optimizers.items():
        opt.load_state_dict(ckpt.optimizer_states[name])


def _is_optimizer_state(key: str) -> bool:
    # Fused optimizers keep their per-row state as module buffers named ``optim_<name>``.
    return key.rsplit(".", 1)[-1].startswith("optim_")


def save_weights(path: str | os.PathLike[str], model: torch.nn.Module, info: dict[str, Any] | None = None) -> None:
    """The model's ``state_dict`` without optimizer state (the best model so far), atomically.

    A fused optimizer's per-row state (``optim_*`` buffers, as large as the table or
    twice that for Adam) is left out: these weights are for prediction, not for training.
    """
    tensors = {k: _tensor_for_file(v) for k, v in model.state_dict().items() if not _is_optimizer_state(k)}
    metadata = {"format": WEIGHTS_FORMAT_NAME, "format_version": str(FORMAT_VERSION),
                "info": json.dumps(info or {})}
    _write(path, tensors, metadata)


def load_weights(path: str | os.PathLike[str], model: torch.nn.Module) -> dict[str, Any]:
    """Load weights written by :func:`save_weights` into ``model``; returns their ``info``."""
    path = Path(path)
    meta, tensors = _open(path, "weights file")
    _check_format(meta, WEIGHTS_FORMAT_NAME, path, "weights file")
    try:
        result = model.load_state_dict(tensors, strict=False)
    except RuntimeError as exc:
        raise AppError(f"weights file {str(path)!r} does not fit this model ({str(exc).splitlines()[0]})") from None
    missing = [k for k in result.missing_keys if not _is_optimizer_state(k)]
    if missing or result.unexpected_keys:
        raise AppError(
            f"weights file {str(path)!r} does not fit this model (missing {missing[:3]}, unexpected "
            f"{list(result.unexpected_keys)[:3]})"
        )
    return json.loads(meta.get("info", "{}"))
