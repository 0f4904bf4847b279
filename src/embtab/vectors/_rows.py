"""Where parsed rows go: a preallocated matrix, the tokens, and the bad-line policy.

Every reader (text or binary) writes into a :class:`RowSink`, so the rules for bad
lines, duplicate tokens and the final matrix live in one place.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from ._errors import VectorsFormatError

ON_BAD_LINE = ("raise", "warn", "skip")

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


class RowSink:
    """A ``(capacity, dim)`` matrix filled row by row, in file order.

    Args:
        path: the file, for messages.
        capacity: an upper bound on the rows (allocated once: no growing, no copies).
        dim: values per row.
        dtype: the torch dtype of the final matrix.
        on_bad_line: ``"raise"``, ``"warn"`` or ``"skip"``.
    """

    def __init__(self, path: str, capacity: int, dim: int, dtype: torch.dtype, on_bad_line: str) -> None:
        self.path = path
        self.on_bad_line = on_bad_line
        self.matrix = torch.empty((capacity, dim), dtype=dtype)  # (capacity, D)
        # A numpy view of the same memory where numpy has the dtype (not bfloat16).
        self._np = self.matrix.numpy() if dtype in _NP_OUT else None
        self.tokens: list[str] = []
        # Line number (text) or byte offset (binary) of each row, for duplicate warnings.
        self.where = np.zeros(capacity, dtype=np.int64)
        self.n = 0
        self.skipped = 0
        self._first_skip: str | None = None

    @property
    def capacity(self) -> int:
        return self.matrix.shape[0]

    @property
    def skip_hint(self) -> str | None:
        """The hint for a bad row: how to drop such rows instead of failing."""
        return "pass on_bad_line='warn' or 'skip' to drop such rows" if self.on_bad_line == "raise" else None

    def bad(self, reason: str, *, line: int | None = None, offset: int | None = None, hint: str | None = None) -> None:
        """A bad row: raise, or count it (and remember the first) to report at the end."""
        err = VectorsFormatError(self.path, reason, line=line, offset=offset, hint=hint)
        if self.on_bad_line == "raise":
            raise err
        self.skipped += 1
        if self._first_skip is None:
            self._first_skip = str(err)

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
        """
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
