"""The one exception type for bad user input: the CLI prints its message as a single line and exits non-zero.

The library names its own parameters (`max_steps must be at least 1`); a front end that calls them something
else says so where it reports the error: the CLI turns `params` into its flags (`--max-steps must be ...`).
"""

from __future__ import annotations

import argparse
import re


class UserError(ValueError):
    """Input the user can fix (a bad prompt, a missing file, an impossible scene). The message says what and how;
    `params` lists the parameters it names, for front ends to rename."""

    def __init__(self, message: str, params: tuple[str, ...] = ()):
        super().__init__(message)
        self.params = tuple(params)


def one_line(err: BaseException, names: dict[str, str] | None = None) -> str:
    """The error as one printable line, each of its `params` renamed through `names` (e.g. "max_steps" ->
    "--max-steps"): paths and prompts may hold newlines or undecodable bytes."""
    message = " ".join(str(err).splitlines())
    for param in getattr(err, "params", ()):
        if names and param in names:
            message = re.sub(rf"(?<![\w/.-]){re.escape(param)}(?![\w/.-])", names[param], message)
    return message.encode("utf-8", "backslashreplace").decode("utf-8")


def flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Every parameter a command-line front end passes on (its dest) -> the flag that sets it, across all
    subcommands: the `names` for one_line."""
    names = {}
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            names.setdefault(action.dest, max(action.option_strings, key=len))
        subcommands = action.choices if isinstance(action.choices, dict) else {}
        for sub in subcommands.values():
            for dest, flag in flag_names(sub).items():
                names.setdefault(dest, flag)
    return names
