"""Library errors name parameters; each front end renders them in its own words (the CLI: the running command's flags)."""

from unifork.cli import main
from unifork.errors import UserError, one_line, param


def test_only_marked_names_are_renamed_never_a_path_or_value_that_spells_one():
    err = UserError(f"{param('out')} /data/out and out exist; choose a new {param('out')}, got 'out'")
    assert str(err) == "out /data/out and out exist; choose a new out, got 'out'"
    assert one_line(err, {"out": "--out"}) == "--out /data/out and out exist; choose a new --out, got 'out'"


def test_cli_errors_name_the_flags_of_the_command_that_ran(tmp_path, capsys):
    assert main(["train", "--config", "quickstart", "--out", str(tmp_path / "out"), "--max-steps", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --max-steps must be at least 1, got 0"
    assert main(["study", "--out", str(tmp_path / "study"), "--steps", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --steps must be at least 1, got 0"
