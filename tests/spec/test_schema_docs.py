"""The generated artefacts (JSON Schema, reference docs) are complete and shipped up to date."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
from ruamel.yaml import YAML

from iir.spec.schema import (
    missing_descriptions,
    spec_json_schema,
    spec_json_schema_text,
    spec_markdown,
    spec_models,
)

ROOT = Path(__file__).resolve().parents[2]


def test_every_spec_field_has_a_description() -> None:
    assert missing_descriptions() == []


def test_shipped_json_schema_is_current() -> None:
    shipped = (ROOT / "config" / "iir.schema.json").read_text(encoding="utf-8")
    assert shipped == spec_json_schema_text(), "run: iir schema -o config/iir.schema.json"


def test_reference_docs_are_current() -> None:
    shipped = (ROOT / "docs" / "reference" / "spec.md").read_text(encoding="utf-8")
    assert shipped == spec_markdown(), "run: iir schema --markdown -o docs/reference/spec.md"


def test_docs_list_every_field() -> None:
    text = spec_markdown()
    for model in spec_models():
        assert f"## {model.__name__}" in text
        for name in model.model_fields:
            assert f"| `{name}` |" in text


def test_iir_yaml_points_editors_at_the_schema() -> None:
    first = (ROOT / "iir.yaml").read_text(encoding="utf-8").splitlines()[0]
    assert first == "# yaml-language-server: $schema=config/iir.schema.json"


@pytest.mark.parametrize("path", ["iir.yaml", *sorted(f"examples/{p.name}" for p in (ROOT / "examples").glob("*.yaml"))])
def test_specs_satisfy_the_json_schema(path: str) -> None:
    data = YAML(typ="safe").load((ROOT / path).read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator(spec_json_schema()).validate(data)


def test_json_schema_rejects_unknown_keys() -> None:
    validator = jsonschema.Draft202012Validator(spec_json_schema())
    bad = {"version": 1, "backends": {"a": {"kind": "agent", "url": "http://x", "models": ["m"], "urll": 1}},
           "routes": [{"name": "r", "to": ["a"]}]}
    assert not validator.is_valid(bad)
