"""The one exception type for a malformed vector file, and hints that name the options
the caller can actually use: Python keywords for the library, flags on the command line."""

from __future__ import annotations

import os
import re
from typing import Any, Collection

# Option -> command-line flag of `embtab vectors ...` (and `embtab train text` for on_bad_line).
CLI_FLAGS = {
    "format": "--format",
    "limit": "--limit",
    "encoding": "--encoding",
    "unicode_errors": "--unicode-errors",
    "dtype": "--dtype",
    "on_bad_line": "--on-bad-line",
    "nonfinite": "--nonfinite",
}
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


class Hint:
    """How to get past an error, naming options; rendered for whoever called.

    ``Hint("pass {on_bad_line} to drop such rows", on_bad_line=("warn", "skip"))`` reads
    ``pass on_bad_line='warn' or 'skip' to drop such rows`` from Python and
    ``pass --on-bad-line warn or skip to drop such rows`` on the command line. A value
    ``...`` stands for "a value of your choice" (``encoding=...``, ``--encoding ENCODING``).
    """

    def __init__(self, template: str, **options: tuple[Any, ...]) -> None:
        unknown = set(_PLACEHOLDER.findall(template)) ^ set(options)
        if unknown:  # a programming error in embtab, not user input
            raise KeyError(f"Hint: placeholders and options differ: {sorted(unknown)}")
        self.template = template
        self.options = options

    def render(self, style: str = "python", available: Collection[str] | None = None) -> str:
        """The hint as text.

        Args:
            style: ``"python"`` (keyword arguments) or ``"cli"`` (flags).
            available: with ``"cli"``, the options the command has (``None``: all of
                :data:`CLI_FLAGS`); the others are named as options of ``embtab vectors convert``,
                whose cache output every command reads.
        """
        missing = []

        def one(m: re.Match[str]) -> str:
            name = m.group(1)
            values = self.options[name]
            if style == "python":
                shown = [_py_value(name, v) for v in values]
                return f"{name}={shown[0]}" + "".join(f" or {s}" for s in shown[1:])
            if available is not None and name not in available:
                missing.append(CLI_FLAGS[name])
            shown = [name.upper() if v is ... else str(v) for v in values]
            return f"{CLI_FLAGS[name]} {' or '.join(shown)}"

        text = _PLACEHOLDER.sub(one, self.template)
        if missing:
            text += (f" ({', '.join(dict.fromkeys(missing))}: options of `embtab vectors convert`; "
                     f"convert the file to a .safetensors cache with them and pass that instead)")
        return text

    def __str__(self) -> str:
        return self.render()

    def __repr__(self) -> str:
        return f"Hint({self.render()!r})"


def _py_value(name: str, value: Any) -> str:
    if value is ...:
        return "..."
    if name == "dtype":
        return f"torch.{value}"
    return repr(value)


def render_hint(hint: str | Hint | None, style: str = "python", available: Collection[str] | None = None) -> str | None:
    if hint is None or isinstance(hint, str):
        return hint
    return hint.render(style, available)


class VectorsFormatError(ValueError):
    """A vector file that cannot be read as its format says.

    The message names the file, the line (text formats), byte offset (binary formats)
    or row (a cache), what was wrong and how to get past it, naming the keyword
    arguments of :func:`embtab.vectors.load`; :meth:`cli_message` says the same with the
    command line's flags. The same facts are attributes, for programs.

    Attributes:
        path: the file.
        line: 1-based line number (text formats), or ``None``.
        offset: byte offset in the (decompressed) file (binary formats), or ``None``.
        row: 0-based row of the matrix (a cache file), or ``None``.
        reason: what was wrong, without the location.
        hint: how to get past it (a :class:`Hint` or text), or ``None``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        reason: str,
        *,
        line: int | None = None,
        offset: int | None = None,
        row: int | None = None,
        hint: str | Hint | None = None,
    ) -> None:
        self.path = str(path)
        self.line = line
        self.offset = offset
        self.row = row
        self.reason = reason
        self.hint = hint
        super().__init__(self._message("python"))

    def _message(self, style: str, available: Collection[str] | None = None) -> str:
        where = self.path
        if self.line is not None:
            where += f", line {self.line}"
        if self.offset is not None:
            where += f", byte offset {self.offset}"
        if self.row is not None:
            where += f", row {self.row}"
        message = f"{where}: {self.reason}"
        hint = render_hint(self.hint, style, available)
        if hint:
            message += f"; {hint}"
        return message

    def cli_message(self, available: Collection[str] | None = None) -> str:
        """The message with command-line flags (``--on-bad-line warn``) in the hint.

        Args:
            available: the options the command has (``None``: every vectors option).
        """
        return self._message("cli", available)
