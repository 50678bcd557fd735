"""One configuration reference: the yaml files, the schemas and the generated page agree (issue 26).

The rule the page is built on (``marlcli/reference.py``): a key's meaning is its schema field's
comment (env keys: the comment in ``conf/env/<env>.yaml``); the default shown is the composed
one, and for the root keys and groups the schema default must be that same value, so a
``RootConfig()`` built in code and ``marl train`` with no arguments never disagree.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from marlcli import algos, config, reference, schemadoc
from marlcli.cli import train_help
from marlcli.config import CONF_DIR, RootConfig

ROOT = Path(__file__).resolve().parents[2]
TYPES: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,),
                                      "str | None": (str, type(None)), "list[str]": (list,)}


def schemas() -> dict[str, type]:
    return {"RootConfig": RootConfig, **{s.__name__: s for s in reference.ROOT_SCHEMAS.values()},
            **{f"algos.{name}.Config": s for name, s in algos.schemas().items()}}


def fits(value: Any, annotation: str) -> bool:
    """A yaml value of the type a schema field is annotated with (an int is a float; a bool is no number)."""
    if isinstance(value, str) and "${" in value:
        return True  # an interpolation: its type is the one of what it points to
    want = TYPES[annotation]
    return isinstance(value, want) and not (isinstance(value, bool) and bool not in want)


def schema_of(key: str, family: str | None = None) -> tuple[str, str] | None:
    """``(annotation, meaning)`` of a dotted key under the schemas, None when no schema has it."""
    head, _, name = key.partition(".")
    if head == "algo":
        return schemadoc.field_docs(algos.schemas()[family or ""]).get(name) if family else None
    if name and head in reference.ROOT_SCHEMAS:
        return schemadoc.field_docs(reference.ROOT_SCHEMAS[head]).get(name)
    return schemadoc.field_docs(RootConfig).get(key)


def test_config_does_not_import_the_algorithms() -> None:
    """config sits below algos: no import of them in its source, nor at run time; compose says what is missing."""
    for module in ("config.py", "overrides.py"):
        tree = ast.parse((ROOT / "marlcli" / module).read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [f"{node.module}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom) else []
            assert not [n for n in names if n.startswith("marlcli.algos")], f"marlcli/{module} imports {names}"
    code = ("import sys; import marlcli.overrides as o, marlcli.config as c; assert 'marlcli.algos' not in sys.modules\n"
            "try: c.compose([])\nexcept RuntimeError as e: print(e)\n"
            "import marlcli.algos; print(c.compose(['algo=qmix']).algo.mixer)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "import marlcli.algos" in out.stdout and out.stdout.splitlines()[-1] == "qmix"


def test_every_schema_field_has_a_comment() -> None:
    missing = [f"{name}.{field}" for name, schema in schemas().items()
               for field, (_, meaning) in schemadoc.field_docs(schema).items() if not meaning]
    assert not missing, f"schema fields without a comment (their meaning on the page and in --help): {missing}"
    assert set(schemadoc.field_docs(RootConfig)) == {f.name for f in dataclasses.fields(RootConfig)}


def test_every_yaml_key_is_in_its_schema_with_a_value_of_its_type() -> None:
    bad = []
    files = [CONF_DIR / "config.yaml", *[p for g in config.GROUP_SCHEMAS for p in sorted((CONF_DIR / g).glob("*.yaml"))]]
    for path in files:
        prefix = "" if path.parent == CONF_DIR else f"{path.parent.name}."
        for key, value in schemadoc.flatten({k: v for k, v in schemadoc.yaml_values(path).items() if k != "hydra"}).items():
            found = schema_of(prefix + key)
            if found is None or not fits(value, found[0]):
                bad.append(f"{path.relative_to(CONF_DIR)}: {prefix}{key}={value!r} ({found[0] if found else 'no such key'})")
    env_keys = [set(schemadoc.yaml_values(p)) for p in (CONF_DIR / "env").glob("*.yaml")]
    for algo in schemadoc.options("algo"):
        path = CONF_DIR / "algo" / f"{algo}.yaml"
        family = str(reference.composed([f"algo={algo}"])["algo.family"])
        values = schemadoc.flatten(schemadoc.yaml_values(path))
        for key in reference.own_keys(path):
            value = values.get(key, values.get(key.removeprefix("algo.")))
            if key.startswith("env."):  # an algorithm's env default must be a key of every env
                ok = all(key.removeprefix("env.") in keys for keys in env_keys)
            else:
                found = schema_of(key, family)
                ok = found is not None and fits(value, found[0])
            if not ok:
                bad.append(f"algo/{algo}.yaml: {key}={value!r}")
    assert not bad, "yaml keys that their schema does not have, or of the wrong type:\n" + "\n".join(bad)


def test_schema_defaults_are_the_composed_defaults() -> None:
    """The root keys and groups: what a schema says by default is what `marl train` composes with no arguments."""
    values = reference.composed([])
    differ = []
    for prefix, schema in [("", RootConfig), *[(f"{k}.", s) for k, s in reference.ROOT_SCHEMAS.items()]]:
        for name, default in schemadoc.field_defaults(schema).items():
            if dataclasses.is_dataclass(default) or (schema is RootConfig and name in reference.GROUPS):
                continue
            if values.get(prefix + name) != default:
                differ.append(f"{prefix}{name}: schema {default!r}, conf/ {values.get(prefix + name)!r}")
    assert not differ, "schema defaults that differ from the composed conf/ (fix the schema in marlcli/config.py):\n" \
        + "\n".join(differ)


def test_yaml_comments_are_the_schema_meanings() -> None:
    """Root and group yamls may comment a key only with its schema meaning; env yamls comment every key."""
    bad = []
    for path in [CONF_DIR / "config.yaml", *[p for g in config.GROUP_SCHEMAS for p in (CONF_DIR / g).glob("*.yaml")]]:
        _, comments = schemadoc.yaml_comments(path)
        for key, comment in comments.items():
            found = schema_of(key)
            if comment and found is not None and comment != found[1]:
                bad.append(f"{path.relative_to(CONF_DIR)}: {key}: '{comment}' is not the schema's '{found[1]}'")
    for path in (CONF_DIR / "env").glob("*.yaml"):
        header, comments = schemadoc.yaml_comments(path)
        bad += [f"env/{path.name}: {key} has no comment" for key in map("env.{}".format, schemadoc.yaml_values(path))
                if not comments.get(key)]
        bad += [f"env/{path.name}: no header comment"] if not header else []
    assert not bad, "\n".join(bad)


def test_committed_page_is_a_fresh_render() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text()
    assert page == reference.render(), "docs/configuration.md is stale: run `python -m marlcli.reference`"


@pytest.mark.parametrize("overrides", [[], ["algo=qmix", "env=tag", "comm=tarmac"]])
def test_train_help_shows_every_key_with_its_type_default_and_meaning(overrides: list[str]) -> None:
    cfg = config.compose(overrides)
    rows = [r for _, section in reference.help_rows(cfg, overrides) for r in section]
    leaves = {k for k in reference.composed(overrides) if not k.startswith("hydra")}
    assert {r.key for r in rows} == leaves
    assert not [r.key for r in rows if not r.meaning], "keys without a meaning in --help"
    text = train_help(overrides)
    assert "Config groups (group=option):" in text and "Examples:" in text
    for r in rows:
        assert any(line.split()[:2] == [r.key, r.type.split()[0]] for line in text.splitlines()), r.key
    if overrides:
        assert re.search(r"^ +algo\.mixer_embed +int +16 ", text, re.M)  # qmix's composed value, not the schema's 32
