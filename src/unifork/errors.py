"""The one exception type for bad user input: the CLI prints its message as a single line and exits non-zero.

The library names its own parameters, marked with `param`: `f"{param('max_steps')} must be at least 1"` reads
"max_steps must be at least 1" from Python, and a front end that calls the parameter something else renders its
own name instead (the CLI: "--max-steps must be at least 1"). Only marked names are renamed, never a path or a
value that happens to spell one.
"""

from __future__ import annotations

import argparse
import re

_MARK = "\x00"  # no path, argv word or prompt can hold NUL, so a marked name is never confused with user text
_MARKED = re.compile(f"{_MARK}([^{_MARK}]+){_MARK}")


def param(name: str) -> str:
    """A parameter's name inside a UserError message, for front ends to rename."""
    return f"{_MARK}{name}{_MARK}"


class UserError(ValueError):
    """Input the user can fix (a bad prompt, a missing file, an impossible scene). The message says what and how."""

    def __str__(self) -> str:
        return self.render()

    def render(self, names: dict[str, str] | None = None) -> str:
        """The message with each marked parameter called by `names` (e.g. "max_steps" -> "--max-steps"), or by
        its Python name where `names` has none."""
        names = names or {}
        return _MARKED.sub(lambda m: names.get(m.group(1), m.group(1)), super().__str__())


def one_line(err: BaseException, names: dict[str, str] | None = None) -> str:
    """The error as one printable line: paths and prompts may hold newlines or undecodable bytes."""
    message = err.render(names) if isinstance(err, UserError) else str(err)
    return " ".join(message.splitlines()).encode("utf-8", "backslashreplace").decode("utf-8")


def flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """The parameters one command passes on (its dests) -> the flags that set them: the `names` for one_line."""
    return {a.dest: max(a.option_strings, key=len) for a in parser._actions if a.option_strings and a.dest != "help"}


class OneLineParser(argparse.ArgumentParser):
    """Flag mistakes as one line too (argparse prints the whole usage first); subcommands inherit the class."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")
