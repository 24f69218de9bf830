"""The README's command table is the whole command surface: every command the parser has is in it, with every
option, and it names nothing the parser lacks."""

import argparse
import re
from pathlib import Path

from flowsr.runtime import backends, options
from flowsr.runtime.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"
OPTION = re.compile(r"(?<![\w-])(--?[a-z][a-z0-9-]*)")


def readme_table() -> dict[tuple[str, ...], set[str]]:
    """{command path: the options its entry names}, with the option groups (`NAME = ...`) expanded."""
    text = README.read_text().split("## Command line", 1)[1]
    block = text.split("```text\n", 1)[1].split("```", 1)[0]
    entries: list[str] = []
    for line in block.splitlines():
        if line.startswith(" ") and entries:
            entries[-1] += " " + line.strip()
        elif line.strip():
            entries.append(line.strip())
    groups = {}
    commands = {}
    for entry in entries:
        if entry.startswith("flowsr "):
            words = entry.split()[1:]
            path = tuple(re.match(r"[a-z0-9]+$", word) and word for word in words)
            path = path[: path.index(None)] if None in path else path
            commands[path] = entry
        else:
            name, _, options = entry.partition("=")
            groups[name.strip()] = set(OPTION.findall(options))
    table = {}
    for path, entry in commands.items():
        options = set(OPTION.findall(entry))
        for name, members in groups.items():
            if re.search(rf"\b{name}\b", entry):
                options |= members
        table[path] = options
    return table


def leaf_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    subcommands = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    if not subcommands:
        yield path, parser
        return
    for name, child in subcommands[0].choices.items():
        yield from leaf_parsers(child, (*path, name))


def mismatches(table: dict[tuple[str, ...], set[str]], parser: argparse.ArgumentParser) -> list[str]:
    """What the table and the parser disagree on: commands, and per command the options by their long names."""
    leaves = dict(leaf_parsers(parser))
    found = [f"command flowsr {' '.join(path)}" for path in sorted(set(table) ^ set(leaves))]
    for path in sorted(set(table) & set(leaves)):
        canonical = {}
        for action in leaves[path]._actions:
            if action.option_strings and not isinstance(action, argparse._HelpAction):
                longest = max(action.option_strings, key=len)
                canonical.update(dict.fromkeys(action.option_strings, longest))
        named = {canonical.get(option, option) for option in table[path]}
        found += [f"flowsr {' '.join(path)} {option}" for option in sorted(named ^ set(canonical.values()))]
    return found


def test_readme_table_names_every_command_and_option_and_nothing_else():
    table = readme_table()
    assert mismatches(table, build_parser()) == []


def test_the_check_sees_a_missing_option_an_unknown_one_and_a_missing_command():
    table = readme_table()
    table[("sr",)] = table[("sr",)] - {"--overwrite"}
    table[("degrade",)] = table[("degrade",)] | {"--bogus"}
    del table[("model", "merge")]
    assert mismatches(table, build_parser()) == [
        "command flowsr model merge",
        "flowsr degrade --bogus",
        "flowsr sr --overwrite",
    ]


def test_backend_choices_are_the_runtime_backends():
    """The parser's list (kept free of torch imports) names the backends the runtime has."""
    assert options.BACKENDS == tuple(backends.BACKENDS)
