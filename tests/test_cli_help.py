"""Every registered command has a one-line purpose and an "Example:" in its `--help`, and is listed by
`cryoscape --help` (the README promises both)."""

import pytest

from cryoscape.cli.main import COMMANDS, _load, main


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_has_an_example(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: cryoscape {name}")
    assert "Example:" in text, f"`cryoscape {name} --help` has no example"
    example_lines = text.split("Example:", 1)[1].strip().splitlines()
    assert example_lines and example_lines[0].strip().startswith(f"cryoscape {name}"), example_lines[:1]
    purpose = (_load(name).__doc__ or "").strip().splitlines()[0]
    assert purpose and purpose in text


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    missing = [name for name in COMMANDS if f"    {name}" not in text]
    assert not missing
