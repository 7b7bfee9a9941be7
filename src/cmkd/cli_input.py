"""What the `cmkd` command does with its input around jsonargparse.

- Parsing is locked down: no value of a config can name a class for the parser to import or
  build (`lock_down_parsing`), and configs are typed as plain data (`cmkd.config`).
- Config files are read as plain YAML first (`check_configs`): a syntax error names the file
  and line, a Python tag (`!!python/...`) or a `class_path` is refused before anything is
  parsed, and a run folder's saved config.yaml replays (its `command:` line is checked against
  the command, then left out of what the parser sees).
- Every parser error becomes one line naming the option, the value and the fix
  (`parse_error_line`); full usage only with `--help`.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cmkd.errors import CmkdError

# Keys that make jsonargparse treat a mapping as "import this class and build it".
_CLASS_KEYS = ("class_path", "init_args", "__path__")


def lock_down_parsing(commands: dict) -> None:
    """No config value is ever imported or instantiated: a `class_path` in a value is kept as
    data (never built), and every import path given as a value is denied except cmkd's own
    config dataclasses (the parser names them itself to read a list of them, e.g.
    distill.terms). The config dataclasses are typed as plain data besides
    (tests/test_cli_input.py walks them)."""
    from jsonargparse import set_parsing_settings

    # The parser may name a dataclass by its module (cmkd.config.TermConfig) or, since the
    # public API re-exports it, by the package (cmkd.TermConfig): both, and nothing else.
    classes = config_dataclasses(commands)
    allowed = sorted(
        {f"{c.__module__}.{c.__qualname__}" for c in classes}
        | {f"cmkd.{c.__qualname__}" for c in classes}
    )
    set_parsing_settings(
        instantiate_subclass_spec_in_any=False,
        import_path_denylist=["*"],
        import_path_allowlist=allowed,
        # The config fields' docstrings (cmkd.config) are the help text of their options.
        docstring_parse_attribute_docstrings=True,
    )


def cli_functions(commands: dict) -> list[Callable]:
    """The functions behind every (nested) subcommand."""
    out: list[Callable] = []
    for value in commands.values():
        out += cli_functions(value) if isinstance(value, dict) else [value]
    return out


def config_dataclasses(commands: dict) -> set[type]:
    """Every dataclass a CLI function takes, at any depth (DataConfig, TermConfig, ...)."""
    found: set[type] = set()
    pending = [
        hint
        for func in cli_functions(commands)
        for name, hint in typing.get_type_hints(func).items()
        if name != "return"
    ]
    while pending:
        hint = pending.pop()
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            if hint not in found:
                found.add(hint)
                pending += list(typing.get_type_hints(hint).values())
        else:
            pending += [a for a in typing.get_args(hint) if a is not Ellipsis]
    return found


@dataclass
class CommandLine:
    """The arguments handed to the parser, and what was learnt reading them."""

    args: list[str]
    command: str
    """The subcommand path, e.g. 'train' or 'bench grid' ('' when none was given)."""
    configs: list[tuple[Path, Any]] = field(default_factory=list)
    """Each config file given, with its content as plain data."""


def command_of(args: list[str], commands: dict) -> str:
    """The subcommand path at the start of `args` ('' if none)."""
    path, level = [], commands
    for arg in args:
        if not isinstance(level, dict) or arg not in level:
            break
        path.append(arg)
        level = level[arg]
    return " ".join(path)


def check_configs(args: list[str], commands: dict) -> CommandLine:
    """Read every `--config FILE` as plain YAML and refuse class paths in any value; returns
    the arguments to parse (a run folder's config.yaml without its `command:` line)."""
    line = CommandLine([], command_of(args, commands))
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--config" and i + 1 < len(args):
            line.args += ["--config", _config_value(args[i + 1], line)]
            i += 2
            continue
        if arg.startswith("--config="):
            line.args.append("--config=" + _config_value(arg.split("=", 1)[1], line))
        elif i > 0 and args[i - 1].startswith("--") and _is_yaml_file(arg):
            # A section's own config file (`--data data.yaml`): the same checks.
            path = Path(arg).expanduser()
            line.configs.append((path, {args[i - 1][2:]: _plain_yaml(_read(path), path)}))
            line.args.append(arg)
        else:
            _refuse_class_value(arg, args[i - 1] if i else "")
            line.args.append(arg)
        i += 1
    return line


_PLAIN_DATA = (
    "configs are plain data (strings, numbers, lists, mappings) and cmkd never imports or "
    "builds a class named in one"
)


def _refuse_class_value(arg: str, previous: str) -> None:
    """A value on the command line (`--model.options '{x: {class_path: ...}}'`) that names a
    class is refused like one in a config file."""
    if arg.startswith("--") and "=" in arg:
        option, value = arg.split("=", 1)
    elif previous.startswith("--"):
        option, value = previous, arg
    else:
        return
    key = _class_key_in(value)
    if key is not None:
        raise CmkdError(f"{option} holds a {key}; {_PLAIN_DATA}")


def _class_key_in(value: str) -> str | None:
    """The class key (class_path, init_args) in a YAML value's mappings, if any."""
    if not any(k in value for k in _CLASS_KEYS):
        return None
    try:
        pending = [yaml.safe_load(value)]
    except yaml.YAMLError:
        return None  # not YAML data: the parser takes it as a plain string
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            found = next((k for k in _CLASS_KEYS if k in item), None)
            if found is not None:
                return found
            pending += list(item.values())
        elif isinstance(item, list):
            pending += item
    return None


def _is_inline_yaml(value: str) -> bool:
    return value.lstrip().startswith("{") or "\n" in value or ": " in value


def _config_value(value: str, line: CommandLine) -> str:
    """The --config value to hand to the parser: the file itself, or, for a run folder's
    config.yaml, its content without the `command:` line."""
    if _is_inline_yaml(value):  # `--config '{optim: {epochs: 3}}'`: the parser reads it
        key = _class_key_in(value)
        if key is not None:
            raise CmkdError(f"--config holds a {key}; {_PLAIN_DATA}")
        return value
    path = Path(value).expanduser()
    if not path.is_file():
        raise CmkdError(f"config file {path} does not exist")
    data = _plain_yaml(_read(path), path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CmkdError(
            f"config file {path} holds a {type(data).__name__}, not a mapping of options "
            "(key: value lines)"
        )
    line.configs.append((path, data))
    saved = data.get("command")
    if saved is None:
        return value
    if saved != line.command:
        raise CmkdError(
            f"config file {path} was saved by `cmkd {saved}`; rerun it with "
            f"`cmkd {saved} --config {path}`"
        )
    # A run folder's config.yaml: the same run again, without the record of its command.
    return yaml.safe_dump({k: v for k, v in data.items() if k != "command"}, sort_keys=False)


def _is_yaml_file(value: str) -> bool:
    return value.lower().endswith((".yaml", ".yml")) and Path(value).expanduser().is_file()


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise CmkdError(f"cannot read config file {path}: {err}") from None


def _plain_yaml(text: str, path: Path) -> Any:
    """The file's data through YAML's safe loader: syntax errors and Python tags are one-line
    errors naming the file and line; a class_path anywhere is refused."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.constructor.ConstructorError as err:
        raise CmkdError(
            f"config file {path}{_at(err.problem_mark)}: the tag {err.problem.split()[-1]} "
            f"is not allowed; {_PLAIN_DATA}"
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        context = getattr(err, "context", None)
        raise CmkdError(
            f"config file {path}{_at(mark)}: {problem}"
            + (f" ({context})" if context else "")
            + " (YAML syntax)"
        ) from None
    found = _class_key(node, [])
    if found is not None:
        key, mark = found
        raise CmkdError(f"config file {path}{_at(mark)}: {key} is not accepted; {_PLAIN_DATA}")
    return data


def _at(mark: Any) -> str:
    return "" if mark is None else f", line {mark.line + 1}, column {mark.column + 1}"


def _class_key(node: Any, path: list[str]) -> tuple[str, Any] | None:
    """The dotted key of the first class_path/init_args in a YAML node tree, and its mark."""
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            name = str(key.value)
            if name in _CLASS_KEYS:
                return ".".join([*path, name]), key.start_mark
            found = _class_key(value, [*path, name])
            if found is not None:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found = _class_key(item, [*path[:-1], f"{path[-1] if path else ''}[{i}]"])
            if found is not None:
                return found
    return None


# --- parser errors ------------------------------------------------------------------------


def option_keys(func: Callable) -> list[str]:
    """Every dotted option of a CLI function: its parameters and, for dataclass parameters,
    their fields (`optim.epochs`, `distill.pairing.strategy`)."""
    keys: list[str] = []
    for name, hint in typing.get_type_hints(func).items():
        if name != "return":
            keys += _keys_of(name, hint)
    return keys


def _keys_of(prefix: str, hint: Any) -> list[str]:
    keys = [prefix]
    for arg in [hint, *typing.get_args(hint)]:
        if dataclasses.is_dataclass(arg):
            for name, sub in typing.get_type_hints(arg).items():
                keys += _keys_of(f"{prefix}.{name}", sub)
    return keys


_TYPE_NAMES = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "NoneType": "null",
    "dict": "a mapping",
    "list": "a list",
}


def _expected(text: str) -> str:
    """jsonargparse's 'Expected a <class 'int'>' in words."""
    text = re.sub(r"<class '([\w.]+)'>", lambda m: m.group(1), text)
    literal = re.match(r"typing\.Literal\[(.*)\]$", text)
    if literal:
        values = literal.group(1).replace("'", "")
        return values if "," not in values else "one of " + values
    if text.startswith("typing.Union[") or text.startswith("Optional["):
        return text.replace("typing.", "").replace("NoneType", "null")
    return _TYPE_NAMES.get(text, text)


def _top_level_items(text: str) -> list[str]:
    """The comma-separated items of a type list, commas inside brackets kept: "bool,
    typing.Literal['a', 'b']" is two items."""
    items, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            items.append(text[start:i].strip())
            start = i + 1
    return [*items, text[start:].strip()]


def parse_error_line(message: str, line: CommandLine, commands: dict) -> str:
    """One line for a jsonargparse error: what is wrong, with which option or file, and the fix."""
    command = line.command
    helper = f"`cmkd {command} --help`".replace("  ", " ") if command else "`cmkd --help`"
    text = message.strip()
    if m := re.search(r"does not accept option '([^']+)'", text):
        return _unknown_option(m.group(1), line, commands, helper)
    if m := re.match(r"unrecognized arguments: (\S+)", text):
        return _unknown_option(m.group(1).lstrip("-").split("=")[0], line, commands, helper)
    if m := re.search(r"invalid choice: '([^']+)' \(choose from (.*)\)", text):
        choices = [c.strip(" '") for c in m.group(2).split(",")]
        close = difflib.get_close_matches(m.group(1), choices, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        where = f"`cmkd {command}`" if command else "cmkd"
        listed = ", ".join(choices)
        return f"unknown command '{m.group(1)}' for {where}{hint} (choose from {listed})"
    if "but it was not provided" in text:
        level = _level(commands, command)
        names = ", ".join(level) if isinstance(level, dict) else ""
        return f"no command given; choose one of: {names} ({helper})"
    if m := re.match(r"the following arguments are required: (.*)", text):
        missing = [k.split(".", 1)[-1] if command else k for k in m.group(1).split(", ")]
        options = ", ".join(f"--{k}" for k in missing)
        return (
            f"`cmkd {command}` needs {options} (on the command line, or as "
            f"`{missing[0]}:` in the config file)"
        )
    if m := re.search(r'Parser key "config":\s*File does not exist: (.*)', text):
        return f"config file {m.group(1).strip()} does not exist"
    if "Problems parsing config" in text:
        problem = " ".join(text.split("Problems parsing config:", 1)[1].split())
        return f"a config given on the command line is not valid YAML: {problem}"
    keys = re.findall(r'Parser key "([^"]+)"', text)
    got = re.findall(r"Expected (?:a |an )?(.*?)\. Got value: (.*)", text)
    # The subtypes list ends with its line (a Literal inside it has brackets of its own).
    union = re.search(r"Subtypes: \[([^\n]*)\][ \t]*\n.*Given value: (.*)$", text, re.S)
    if keys and union:
        names = [_expected(t) for t in _top_level_items(union.group(1))]
        key = ".".join(dict.fromkeys(k for k in keys if k != "init_args"))
        return (
            f"{key}: expected {' or '.join(names)}, got {union.group(2).strip()!r}"
            f"{_in_config(keys[0], line, union.group(2).strip())}; {helper} describes it"
        )
    if keys and got:
        keys = [k for k in keys if k != "init_args"]
        key = ".".join(dict.fromkeys(keys))  # a nested key repeats its parent's prefix
        expected, value = got[-1]
        return (
            f"{key}: expected {_expected(expected.strip())}, got {value.strip()!r}"
            f"{_in_config(keys[0], line, value.strip())}; {helper} describes it"
        )
    return " ".join(text.split()) + f" ({helper})"


def _level(commands: dict, command: str) -> Any:
    level: Any = commands
    for part in command.split():
        level = level[part]
    return level


def _unknown_option(key: str, line: CommandLine, commands: dict, helper: str) -> str:
    target = _level(commands, line.command) if line.command else None
    known = option_keys(target) if callable(target) else []
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    where = f"`cmkd {line.command}`" if line.command else "cmkd"
    return f"{where} has no option '{key}'{_in_config(key, line)}{hint} ({helper} lists them)"


def _in_config(key: str, line: CommandLine, value: str | None = None) -> str:
    """' (in config file F)' when the offending key was given in a config file, and, where
    the parser names the value it refused, with that value (the same key on the command
    line is checked, and refused, on its own)."""
    for path, data in reversed(line.configs):
        node: Any = data
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            if value is None or str(node) == value:
                return f" (in config file {path})"
    return ""
