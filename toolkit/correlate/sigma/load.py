"""Load Sigma rules from files and directories; anything unusable is one RuleError line.

A syntax error (YAML or Sigma) names the file and, where the parser knows it,
the line; a directory holding no ``*.yml``/``*.yaml`` file is an error too, so
a mistyped path never passes as "no matches".

Example::

    rules = load_rules([Path("rules/sigma"), Path("~/sigma/rules/linux").expanduser()])
    len(rules)
"""

from __future__ import annotations

from pathlib import Path

import yaml
from sigma.collection import SigmaCollection
from sigma.exceptions import SigmaError, SigmaRuleLocation

from toolkit.errors import RuleError, one_line

SUFFIXES = (".yml", ".yaml")
MAX_RULE_FILE = 8 << 20  # a Sigma rule is a few KiB; anything this big is not one


def rule_files(paths) -> list[Path]:
    """The rule files named by ``paths`` (directories searched recursively), in a stable order."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
            if not found:
                raise RuleError(f"{path}: no Sigma rules (*.yml, *.yaml) in this directory")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise RuleError(f"{path}: no such Sigma rule file or directory")
    return files


def _parse(path: Path) -> SigmaCollection:
    if path.stat().st_size > MAX_RULE_FILE:
        raise RuleError(f"{path}: {path.stat().st_size} bytes is too big for a Sigma rule file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RuleError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        return SigmaCollection.from_yaml(
            text, source=SigmaRuleLocation(path), collect_filters=True, resolve_references=False
        )
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise RuleError(f"{where}: YAML syntax error: {one_line(problem)}") from None
    except SigmaError as exc:
        raise RuleError(
            f"{_where(exc, path)}: invalid Sigma rule: {one_line(exc.args[0] if exc.args else exc)}"
        ) from None


def _where(exc: SigmaError, path: Path) -> str:
    source = getattr(exc, "source", None)
    path = getattr(source, "path", None) or path
    line = getattr(source, "line", None)
    return f"{path}:{line}" if line else str(path)


def load_rules(paths) -> SigmaCollection:
    """Every Sigma rule (and correlation rule) under ``paths``, references resolved."""
    files = rule_files(paths)
    collections = []
    for path in files:
        collection = _parse(path)
        if not len(collection) and path in map(Path, paths):
            raise RuleError(f"{path}: holds no Sigma rule")
        collections.append(collection)
    merged = SigmaCollection.merge(collections, resolve_references=False)
    if not len(merged):
        raise RuleError(f"{', '.join(map(str, paths))}: no Sigma rule in these files")
    try:
        merged.resolve_rule_references()
        for rule in merged:
            # pySigma parses a condition only when converting: a typo in one is still a syntax error here
            for condition in getattr(getattr(rule, "detection", None), "parsed_condition", []):
                condition.parsed  # noqa: B018
    except SigmaError as exc:
        raise RuleError(
            f"{_where(exc, files[0])}: invalid Sigma rule: {one_line(exc.args[0] if exc.args else exc)}"
        ) from None
    return merged
