"""The one exception type for bad user input: the CLI prints its message as a single line and exits non-zero."""


class UserError(ValueError):
    """Input the user can fix (a bad prompt, a missing file, an impossible scene). The message says what and how."""
