"""`onestep --help` and each command's help are true and complete, and the shared flags the root
README promises are exactly the flags each command's parser takes."""

import dataclasses
import json
import re
from pathlib import Path

import pytest

from onestep.core import cli, cli_args, cli_info, cli_search, cli_vector
from onestep.core.cli import COMMANDS, build_parser, main, summary

README = Path(__file__).resolve().parents[3] / "README.md"
SHARED = ("--seed", "--threads", "--no-progress", "--dry-run")


def _subparsers() -> dict:
    parser = build_parser()
    (action,) = [a for a in parser._actions if a.dest == "command"]
    return action.choices


def _flags(subparser) -> set[str]:
    return set(subparser._option_string_actions)


def test_every_command_has_a_parser():
    assert list(_subparsers()) == list(COMMANDS)
    assert set(COMMANDS) == {"demo", "train", "distill", "sample", "eval", "search-schedule",
                             "methods", "solvers"}


def _readme_promises() -> dict[str, set[str]]:
    """{flag: commands} from the "Shared flags:" item of the README's command-line section."""
    text = README.read_text()
    section = text.split("## Command line: vector and tabular data", 1)[1].split("\n## ", 1)[0]
    item = re.search(r"^- Shared flags: (.*?)(?=^- |^\S|\Z)", section, re.S | re.M)
    assert item, "the README's command-line section lost its 'Shared flags:' item"
    words = " ".join(item.group(1).split())
    words = re.sub(r"\([^)]*\)", "", words).split(". ")[0]  # notes and the next sentence off
    promised, covered = {}, set()
    for clause in words.split(";"):
        commands = {w for w in re.findall(r"[a-z][a-z-]*", clause.split(" on ")[-1])
                    if w in COMMANDS}
        covered |= commands
        if " on " in clause:
            flags = re.findall(r"`(--[a-z-]+)`", clause.split(" on ")[0])
            assert flags, clause
            for flag in flags:
                promised[flag] = commands
    assert set(promised) == set(SHARED), promised
    assert covered == set(COMMANDS), f"the README says nothing of {set(COMMANDS) - covered}"
    return promised


def test_readme_shared_flags_match_the_parsers():
    promised = _readme_promises()
    subs = _subparsers()
    for flag, commands in promised.items():
        taking = {name for name, sub in subs.items() if flag in _flags(sub)}
        assert taking == commands, (flag, "README:", sorted(commands), "parsers:", sorted(taking))


def test_readme_lists_every_command():
    text = README.read_text()
    section = text.split("## Command line: vector and tabular data", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    listed = {line.split()[1] for line in block.strip().splitlines()}
    assert listed | {"demo"} == set(COMMANDS)  # demo has its own section above


@pytest.mark.parametrize("argv", [
    ["eval", "--dry-run"],
    ["search-schedule", "--threads", "1", "--dry-run"],
    ["sample", "--model", "m", "--seed", "3", "--threads", "2", "--no-progress", "--dry-run"],
    ["train", "--data", "x.npy", "--out", "o", "--overwrite", "--dry-run"],
    ["demo", "--overwrite", "--nfe", "2", "4", "--dry-run"],
])
def test_dry_run_prints_the_configuration(argv, capsys):
    assert main(argv) == 0
    shown = json.loads(capsys.readouterr().out)
    cls = COMMANDS[argv[0]][0]
    assert set(shown) == {f.name for f in dataclasses.fields(cls)} and shown["dry_run"] is True


def test_search_schedule_threads_is_validated(capsys):
    assert main(["search-schedule", "--model", "nowhere", "--threads", "-1"]) == 2
    assert "--threads must be >= 0" in capsys.readouterr().err


def test_root_help_lists_every_command_with_a_sentence(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for name, (cls, _) in COMMANDS.items():
        line = summary(cls)
        assert line in out, name
        assert re.fullmatch(r"[A-Z][^\n]*[^.]\.", line) and ". " not in line, line
        assert len(line) <= 130, line
    for developer_text in ("frozen dataclass", "(default: )", "cli_args", "COMMANDS"):
        assert developer_text not in out


def _helps():
    for name, sub in _subparsers().items():
        yield name, sub, [a for a in sub._actions if a.help and a.dest != "help"]


def test_flag_help_shows_required_or_a_default_once():
    for name, sub, actions in _helps():
        for a in actions:
            assert a.help.count("(default:") <= 1, (name, a.dest, a.help)
            if "(required)" in a.help:
                assert "(default" not in a.help, (name, a.dest, a.help)
            elif a.default not in ("", (), None):
                assert a.help.endswith(f"(default: {a.default})") or \
                    a.help.endswith(f"(default: {' '.join(map(str, a.default))})"), a.help
        rendered = " ".join(sub.format_help().split())
        assert "(default: )" not in rendered and "(required). (default" not in rendered, name
        assert rendered.count("(default:") == sum("(default:" in a.help for a in actions)


def test_help_points_only_at_commands_that_exist():
    for name, sub, actions in _helps():
        for text in [sub.description or ""] + [a.help for a in actions]:
            for other in re.findall(r"`onestep ([a-z-]+)", text):
                assert other in COMMANDS, (name, text)


def test_overwrite_flag():
    """Every command that writes a run folder takes --overwrite, right after --out, and says that
    without it such a folder is refused."""
    for cls, after in ((cli_args.TrainArgs, "out"), (cli_args.DistillArgs, "out"),
                       (cli_args.DemoArgs, "out")):
        names = [f.name for f in dataclasses.fields(cls)]
        assert names[names.index(after) + 1] == "overwrite", cls
        field = cls.__dataclass_fields__["overwrite"]
        assert field.default is False
        doc = " ".join(cli._field_docs(cls)["overwrite"].split())
        assert doc.startswith("Delete") and "--out" in doc and "is refused" in doc, doc


def test_old_import_paths_still_work():
    assert cli_vector.TrainArgs is cli_args.TrainArgs and cli_vector.EvalArgs is cli_args.EvalArgs
    assert cli_vector.DistillArgs is cli_args.DistillArgs
    assert cli_vector.SampleArgs is cli_args.SampleArgs
    assert cli_vector.MethodsArgs is cli_args.MethodsArgs
    assert cli_search.SearchArgs is cli_args.SearchArgs and cli.DemoArgs is cli_args.DemoArgs
    assert cli_vector.methods is cli_info.methods
    assert callable(cli.parse_dataclass) and callable(cli._parser_for)
    assert callable(cli._field_docs) and cli._KINDS["int"] is int
    for name in COMMANDS:
        assert callable(cli.command_function(name)), name
    assert cli.command_function("eval") is cli_vector.eval_cmd


def test_solvers_lists_solvers_and_schedules(capsys):
    assert main(["solvers"]) == 0
    out = capsys.readouterr().out
    from onestep.core.schedules import SCHEDULES
    from onestep.core.solvers import SOLVERS

    for name in [*SOLVERS, *SCHEDULES, "dpm++2m"]:
        assert name in out, name
