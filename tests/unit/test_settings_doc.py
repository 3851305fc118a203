"""docs/settings.md is what tools/gen_settings_doc.py makes of driftrec/settings.py today."""

from __future__ import annotations

from tools.gen_settings_doc import DOC, render


def test_the_committed_settings_reference_is_current() -> None:
    assert DOC.read_text() == render(), (
        "docs/settings.md is out of date with driftrec/settings.py: run python tools/gen_settings_doc.py")


def test_every_setting_has_a_row_with_its_description() -> None:
    from driftrec.settings import Settings

    text = render()
    for name, field in Settings.model_fields.items():
        assert field.description, f"setting {name} has no description"
        assert f"| `{name}` | `" in text
