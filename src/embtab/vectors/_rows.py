"""Where parsed rows go: a preallocated matrix, the tokens, and the bad-line policy.

Every reader (text or binary) writes into a :class:`RowSink`, so the rules for bad
lines, duplicate tokens and the final matrix live in one place.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from ._errors import Hint, VectorsFormatError

ON_BAD_LINE = ("raise", "warn", "skip")
NONFINITE = ("error", "keep")
# The next wider dtype, named in the hint for a value that overflows a dtype.
WIDER = {torch.float16: "float32", torch.bfloat16: "float32", torch.float32: "float64"}

# torch dtype -> the numpy dtype we parse text into. float32 files are parsed straight
# to float32 (numpy parses each number to the nearest double, then rounds once: what
# gensim does too); other dtypes go through float64 so that they are rounded once,
# from the double, as well.
_NP_OUT = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16}


def check_dtype(dtype: object, where: str) -> torch.dtype:
    if dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        raise TypeError(
            f"{where}: dtype must be torch.float32, float64, float16 or bfloat16, got {dtype!r}"
        )
    return dtype  # type: ignore[return-value]


def parse_dtype(dtype: torch.dtype) -> type:
    """The numpy dtype text values are parsed into for an output ``dtype``."""
    return np.float32 if dtype == torch.float32 else np.float64


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def overflow_mask(values: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """Where a finite value of ``values`` (float32 or float64) becomes inf in ``dtype``: ``values.shape``, bool.

    Decided by converting, as the matrix is filled, not by comparing with the largest
    finite value: a value a little above it still rounds down to it.
    """
    if dtype == torch.float64 or (dtype == torch.float32 and values.dtype == np.float32):
        return np.zeros(values.shape, dtype=bool)
    if dtype in _NP_OUT:
        with np.errstate(over="ignore"):
            cast = values.astype(_NP_OUT[dtype])
        return np.isinf(cast) & np.isfinite(values)
    cast = torch.from_numpy(np.require(values, requirements=["C", "W"])).to(dtype)
    return torch.isinf(cast).numpy() & np.isfinite(values)


def overflow_reason(value: float, j: int, dim: int, dtype: torch.dtype, shown: str | None = None,
                    token: str | None = None) -> str:
    """``value j of dim, 1e+39, overflows float32 (...)``: ``shown`` is the value as the file writes it."""
    of = f" for token {token!r}" if token is not None else ""
    return (f"value {j + 1} of {dim}{of}, {shown if shown is not None else repr(float(value))}, overflows "
            f"{dtype_name(dtype)} (its largest finite value is {torch.finfo(dtype).max:.8g})")


def overflow_hint(dtype: torch.dtype, on_bad_line: str) -> Hint:
    wider = WIDER.get(dtype)
    if wider is None:
        return skip_hint(on_bad_line) or Hint("the value is out of range for every floating-point type")
    if on_bad_line == "raise":
        return Hint("pass {dtype} to read it, or {on_bad_line} to drop such rows",
                    dtype=(wider,), on_bad_line=("warn", "skip"))
    return Hint("pass {dtype} to read it", dtype=(wider,))


def skip_hint(on_bad_line: str) -> Hint | None:
    """The hint for a bad row: how to drop such rows instead of failing."""
    if on_bad_line != "raise":
        return None
    return Hint("pass {on_bad_line} to drop such rows", on_bad_line=("warn", "skip"))


def nonfinite_hint(on_bad_line: str) -> Hint:
    """The hint for a row holding NaN or inf while ``nonfinite="error"``."""
    if on_bad_line == "raise":
        return Hint("pass {nonfinite} to keep such rows, or {on_bad_line} to drop them",
                    nonfinite=("keep",), on_bad_line=("warn", "skip"))
    return Hint("pass {nonfinite} to keep such rows", nonfinite=("keep",))


class RowSink:
    """A ``(capacity, dim)`` matrix filled row by row, in file order.

    Args:
        path: the file, for messages.
        capacity: an upper bound on the rows (allocated once: no growing, no copies).
        dim: values per row.
        dtype: the torch dtype of the final matrix.
        on_bad_line: ``"raise"``, ``"warn"`` or ``"skip"``.
        nonfinite: ``"error"`` (a NaN or inf value makes its row bad) or ``"keep"``.
    """

    def __init__(self, path: str, capacity: int, dim: int, dtype: torch.dtype, on_bad_line: str,
                 nonfinite: str = "error") -> None:
        self.path = path
        self.on_bad_line = on_bad_line
        self.nonfinite = nonfinite
        self.dtype = dtype
        self.matrix = torch.empty((capacity, dim), dtype=dtype)  # (capacity, D)
        # A numpy view of the same memory where numpy has the dtype (not bfloat16).
        self._np = self.matrix.numpy() if dtype in _NP_OUT else None
        self.tokens: list[str] = []
        # Line number (text) or byte offset (binary) of each row, for duplicate warnings.
        self.where = np.zeros(capacity, dtype=np.int64)
        self.n = 0
        self.skipped = 0
        self._first_skip: VectorsFormatError | None = None

    @property
    def capacity(self) -> int:
        return self.matrix.shape[0]

    @property
    def skip_hint(self) -> Hint | None:
        """The hint for a bad row: how to drop such rows instead of failing."""
        return skip_hint(self.on_bad_line)

    def hint_for(self, kind: str) -> Hint | None:
        """The hint for a bad row of ``kind``: ``"format"``, ``"nonfinite"`` or ``"overflow"``."""
        if kind == "nonfinite":
            return nonfinite_hint(self.on_bad_line)
        if kind == "overflow":
            return overflow_hint(self.dtype, self.on_bad_line)
        return self.skip_hint

    def bad(self, reason: str, *, line: int | None = None, offset: int | None = None,
            hint: str | Hint | None = None) -> None:
        """A bad row: raise, or count it (and remember the first) to report at the end."""
        err = VectorsFormatError(self.path, reason, line=line, offset=offset, hint=hint)
        if self.on_bad_line == "raise":
            raise err
        self.skipped += 1
        if self._first_skip is None:
            self._first_skip = err

    def add(self, tokens: list[str], values: np.ndarray, where: np.ndarray | range) -> None:
        """Append rows: ``values`` is ``(k, dim)``, one token and one location per row."""
        k = len(tokens)
        if k == 0:
            return
        if self.n + k > self.capacity:
            raise VectorsFormatError(
                self.path,
                f"more rows than the {self.capacity} counted before reading",
                hint="the file changed while it was being read; load it again",
            )
        rows = slice(self.n, self.n + k)
        if self._np is not None:
            self._np[rows] = values  # (k, D), cast to the output dtype by numpy
        else:
            # np.require copies read-only input (np.frombuffer views), which torch refuses to wrap.
            self.matrix[rows].copy_(torch.from_numpy(np.require(values, requirements=["C", "W"])))
        self.tokens.extend(tokens)
        self.where[rows] = where
        self.n += k

    def finish(self, unit: str) -> tuple[list[str], torch.Tensor, dict[str, int], int]:
        """Drop duplicate tokens (keep the first), report skipped rows; return
        ``(tokens, matrix, index, duplicates)``.

        ``unit`` is ``"line"`` or ``"byte offset"``, to word the duplicate warning.

        Raises:
            VectorsFormatError: every row was bad (and dropped): not a vectors file, or
                not in the format it was read as. A load never ends with 0 vectors
                without saying why.
        """
        first = self._first_skip
        if self.n == 0 and first is not None:
            raise VectorsFormatError(
                self.path,
                f"none of its {self.skipped} data row{'s' if self.skipped != 1 else ''} could be read "
                f"(on_bad_line={self.on_bad_line!r} dropped every one); the first: {first.reason}",
                line=first.line, offset=first.offset,
                hint=Hint("check that this is a vectors file, and pass its {format} if the detected one is wrong",
                          format=("glove", "word2vec", "word2vec_binary")),
            )
        if self.skipped and self.on_bad_line == "warn":
            warnings.warn(
                f"{self.path}: skipped {self.skipped} bad row{'s' if self.skipped != 1 else ''}; "
                f"the first: {self._first_skip}",
                stacklevel=4,
            )
        tokens = self.tokens
        n = self.n
        # Reversed, so that the first occurrence of a token is the one left in the dict.
        index = dict(zip(reversed(tokens), range(n - 1, -1, -1)))
        duplicates = n - len(index)
        if duplicates:
            keep = np.fromiter((index[t] == i for i, t in enumerate(tokens)), dtype=bool, count=n)
            first_dup = int(np.flatnonzero(~keep)[0])
            tok = tokens[first_dup]
            warnings.warn(
                f"{self.path}: {duplicates} duplicate token{'s' if duplicates != 1 else ''}; kept "
                f"the first row of each (e.g. {tok!r} at {unit} {int(self.where[index[tok]])}, "
                f"again at {unit} {int(self.where[first_dup])})",
                stacklevel=4,
            )
            kept = np.flatnonzero(keep)
            _compact_rows(self.matrix, kept)
            tokens = [tokens[i] for i in kept]
            n = len(tokens)
            index = {t: i for i, t in enumerate(tokens)}
        matrix = self.matrix[:n] if n != self.capacity else self.matrix
        return tokens, matrix, index, duplicates


def _compact_rows(matrix: torch.Tensor, kept: np.ndarray, block: int = 4096) -> None:
    """Move rows ``kept`` (increasing) to the front of ``matrix``, in place.

    Block by block, so the temporary copies stay small: the matrix is never copied whole.
    """
    kept_t = torch.from_numpy(kept)
    for start in range(0, len(kept), block):
        src = kept_t[start : start + block]
        # index_select makes a small copy first, so overlapping rows are safe.
        matrix[start : start + len(src)] = matrix.index_select(0, src)


def decode_tokens(toks: list[bytes], encoding: str, errors: str) -> list[str] | None:
    """Decode a batch of tokens in one call; ``None`` if one of them fails (strict mode)."""
    try:
        # '\n' cannot occur inside a token (lines are split on it; the binary reader
        # stops a token at whitespace) nor inside a multi-byte character of an
        # ASCII-compatible encoding, so it separates safely.
        out = b"\n".join(toks).decode(encoding, errors).split("\n")
    except UnicodeDecodeError:
        return None
    return out if len(out) == len(toks) else None
