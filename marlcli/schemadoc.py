"""What the schemas and ``conf/`` say about each key: field comments and types, yaml comments and values.

The reading half of the configuration reference (``marlcli/reference.py`` renders it): a
schema field's meaning is its trailing comment, continued by comment lines right below it,
read from the source with ``ast`` and ``tokenize``; a class docstring is its section's prose;
an env key's meaning is its comment in ``conf/env/<env>.yaml``. Below the algorithms (it reads
any dataclass it is given), beside :mod:`marlcli.config`.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import re
import tokenize
from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from marlcli import config
from marlcli.config import CONF_DIR


@cache
def _parsed(path: str) -> tuple[ast.Module, dict[int, str], set[int]]:
    """A source file's tree, its comments by line, and the lines that hold only a comment."""
    text = Path(path).read_text()
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(text).readline) if tok.type == tokenize.COMMENT}
    only = {i for i, line in enumerate(text.splitlines(), 1) if line.strip().startswith("#")}
    return ast.parse(text), comments, only


def _class_node(cls: type) -> tuple[ast.ClassDef, dict[int, str], set[int]]:
    tree, comments, only = _parsed(inspect.getsourcefile(cls) or "")
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == cls.__name__:
            return node, comments, only
    raise LookupError(f"class {cls.__qualname__} not found in its source")


def field_docs(cls: type) -> dict[str, tuple[str, str]]:
    """``{field: (type, meaning)}`` of a dataclass: its annotation as written, and its comment ("" = none)."""
    node, comments, only = _class_node(cls)
    out = {}
    for stmt in node.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            line = stmt.end_lineno or stmt.lineno
            parts = [comments.get(line, "")] if line not in only else [""]
            while line + 1 in only:  # continuation lines of the comment, right below the field
                line += 1
                parts.append(comments[line])
            out[stmt.target.id] = (ast.unparse(stmt.annotation), " ".join(p for p in parts if p))
    return out


def class_doc(cls: type) -> str:
    """A schema's docstring as one paragraph (its section's prose on the page)."""
    node, _, _ = _class_node(cls)
    return " ".join((ast.get_docstring(node) or "").split())


def field_defaults(cls: type) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


@cache
def yaml_comments(path: Path) -> tuple[str, dict[str, str]]:
    """A conf file's header comment and ``{dotted key: comment}`` (keys under the file's package).

    ``# @package _global_`` files give global keys (``algo.lr``, ``train.total_steps``); the others
    are relative to their group (``conf/comm/none.yaml``: ``comm.size``; ``conf/config.yaml``: root).
    """
    lines = path.read_text().splitlines()
    rel = path.relative_to(CONF_DIR).parent.as_posix()
    prefix = "" if rel == "." or (lines and lines[0].strip() == "# @package _global_") else rel.replace("/", ".") + "."
    header, stack, out = [], [], {}
    in_header = True
    for line in lines:
        if in_header and line.startswith("#"):
            if line.strip() != "# @package _global_":
                header.append(line.lstrip("#").strip())
            continue
        in_header = False
        m = re.match(r"^(\s*)([\w.]+):(.*)$", line)
        if not m:
            continue
        indent, key, rest = len(m.group(1)), m.group(2), m.group(3)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        c = re.search(r"(?:^|\s)#\s?(.*)$", rest)
        out[prefix + ".".join(k for _, k in stack)] = c.group(1).strip() if c else ""
    return " ".join(header), out


def yaml_values(path: Path) -> dict[str, Any]:
    """A conf file's own values, unresolved (``${env.N}`` stays), without its defaults list."""
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    assert isinstance(raw, dict)
    raw.pop("defaults", None)
    return raw


def yaml_defaults(path: Path) -> list[Any]:
    return list(OmegaConf.to_container(OmegaConf.load(path)).get("defaults", []))  # type: ignore[union-attr]


def default_options() -> dict[str, str]:
    """The option each group composes when none is given (``conf/config.yaml``'s defaults list)."""
    out = {}
    for entry in yaml_defaults(CONF_DIR / "config.yaml"):
        if isinstance(entry, dict):
            for k, v in entry.items():
                out[k.removeprefix("override ")] = str(v)
    return out


def options(group: str) -> list[str]:
    return [o for o in config.group_options(group) if not o.endswith("_schema")]


def note(meaning: str, comment: str) -> str:
    """What a yaml comment adds to a key's meaning ("" when it only restates it)."""
    if not comment or comment == meaning:
        return ""
    rest = None
    if comment.startswith(meaning):
        rest = comment[len(meaning):]
    elif meaning.endswith(")") and comment.startswith(meaning[:-1]) and comment[len(meaning) - 1] in ";,":
        rest = comment[len(meaning) - 1:].removesuffix(")")
    if rest is None:
        return comment
    rest = rest.strip().lstrip(";:,").strip()
    if rest.startswith("(") and rest.endswith(")") and rest.count("(") == 1:
        rest = rest[1:-1]
    return rest


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in node.items():
        if isinstance(v, dict) and v and not prefix.startswith("env.kwargs") and f"{prefix}{k}" != "env.kwargs":
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
