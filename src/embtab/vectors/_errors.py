"""The one exception type for a malformed vector file."""

from __future__ import annotations

import os


class VectorsFormatError(ValueError):
    """A vector file that cannot be read as its format says.

    The message names the file, the line (text formats) or byte offset (binary
    formats), what was wrong and how to get past it. The same facts are attributes,
    for programs.

    Attributes:
        path: the file.
        line: 1-based line number (text formats), or ``None``.
        offset: byte offset in the (decompressed) file (binary formats), or ``None``.
        reason: what was wrong, without the location.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        reason: str,
        *,
        line: int | None = None,
        offset: int | None = None,
        hint: str | None = None,
    ) -> None:
        self.path = str(path)
        self.line = line
        self.offset = offset
        self.reason = reason
        where = self.path
        if line is not None:
            where += f", line {line}"
        if offset is not None:
            where += f", byte offset {offset}"
        message = f"{where}: {reason}"
        if hint:
            message += f"; {hint}"
        super().__init__(message)
