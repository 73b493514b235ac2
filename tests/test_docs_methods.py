"""docs/methods.md stays true of the code: every method in `distill.METHODS` has a section, no
section names an unknown method, and every `field` / `field=value` in a section's "Defaults:",
"Toy:" or "Image:" paragraph is a field of the method's config dataclass with that value (the
class default, `toy_config(name)`, or `image_defaults(name)` respectively). The sampler sections
(`search_schedule`, `learn_sampler`, `learn_discrete_sampler`) likewise: every `name` /
`name=value` in their "Defaults:" paragraph is a keyword of that function with that default."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import re
from pathlib import Path

import pytest

from onestep.core import discrete, search
from onestep.core.distill import METHODS, toy_config

DOC = Path(__file__).resolve().parents[1] / "docs" / "methods.md"
KINDS = ("Defaults", "Toy", "Image")
MENTION = re.compile(r"`([^`]+)`")
FIELD = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:=(.+))?$")
# the sampler sections: the function whose keyword defaults their "Defaults:" paragraph states
FUNCTIONS = {
    "search_schedule": search.search_schedule,
    "learn_sampler": search.learn_sampler,
    "learn_discrete_sampler": discrete.learn_discrete_sampler,
}


def sections(text: str) -> dict[str, str]:
    """{method name: section text} for every "## `name`..." heading."""
    out = {}
    for block in re.split(r"^## ", text, flags=re.M)[1:]:
        m = re.match(r"`([a-z0-9_]+)`", block)
        if m:
            if m.group(1) in out:
                raise AssertionError(f"two sections for {m.group(1)!r}")
            out[m.group(1)] = block
    return out


def function_sections(text: str) -> dict[str, str]:
    """{function name: section text} for every "## Title: `name` ..." heading that does not
    start with a backticked method name (the sampler sections); the first backticked name in the
    heading names the function."""
    out = {}
    for block in re.split(r"^## ", text, flags=re.M)[1:]:
        heading = block.split("\n", 1)[0]
        m = MENTION.search(heading)
        if heading.startswith("`") or m is None:
            continue
        if m.group(1) in out:
            raise AssertionError(f"two sections for {m.group(1)!r}")
        out[m.group(1)] = block
    return out


def paragraphs(section: str, kind: str) -> list[str]:
    """The paragraphs of `section` that start with "**<kind>:**" (up to the next blank line)."""
    return [p for p in re.split(r"\n\s*\n", section) if p.startswith(f"**{kind}:**")]


def mentions(paragraph: str) -> list[tuple[str, str | None]]:
    """(field, value text or None) for every backticked `field` or `field=value`."""
    out = []
    for token in MENTION.findall(paragraph):
        m = FIELD.match(token.strip())
        if m is None:
            raise AssertionError(
                f"{token!r} in {paragraph[:40]!r}... is not `field` or `field=value`"
            )
        out.append((m.group(1), m.group(2)))
    return out


def same(doc_value, code_value) -> bool:
    """The doc's value equals the code's: floats to rounding, tuples elementwise, else the same
    type and value (True is not 1)."""
    if isinstance(code_value, bool) or isinstance(doc_value, bool):
        return type(doc_value) is type(code_value) and doc_value == code_value
    if isinstance(code_value, float) and isinstance(doc_value, int | float):
        return math.isclose(doc_value, code_value, rel_tol=1e-12)
    if isinstance(code_value, tuple) and isinstance(doc_value, tuple):
        return len(doc_value) == len(code_value) and all(
            same(a, b) for a, b in zip(doc_value, code_value, strict=True)
        )
    return type(doc_value) is type(code_value) and doc_value == code_value


def image_config(name: str):
    image = pytest.importorskip("onestep.image.defaults")
    return image.image_defaults(name)


def _check(label: str, section: str, kind: str, owner: str, values) -> list[str]:
    """Errors for the `field` / `field=value` mentions of `section`'s `kind` paragraphs against
    values() -> {field: value} (the fields `owner` has)."""
    errors = []
    for paragraph in paragraphs(section, kind):
        for field, text in mentions(paragraph):
            known = values()
            if field not in known:
                errors.append(f"{label} {kind}: {owner} has no field {field!r}")
                continue
            if text is None:
                continue
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                errors.append(f"{label} {kind}: cannot read the value of `{field}={text}`")
                continue
            actual = known[field]
            if not same(value, actual):
                errors.append(
                    f"{label} {kind}: the doc says {field}={text}, the code has {actual!r}"
                )
    return errors


def check(name: str, section: str, kind: str, config) -> list[str]:
    cls = METHODS[name][0]
    names = [f.name for f in dataclasses.fields(cls)]
    return _check(
        name, section, kind, cls.__name__, lambda: {n: getattr(config(), n) for n in names}
    )


def check_function(name: str, section: str, function) -> list[str]:
    """The "Defaults:" paragraphs of a sampler section against `function`'s keyword defaults
    (a parameter without a default counts as no field)."""
    defaults = {
        p.name: p.default
        for p in inspect.signature(function).parameters.values()
        if p.default is not inspect.Parameter.empty
    }
    return _check(name, section, "Defaults", f"{function.__name__}()", lambda: defaults)


@pytest.fixture(scope="module")
def doc_sections() -> dict[str, str]:
    return sections(DOC.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def sampler_sections() -> dict[str, str]:
    return function_sections(DOC.read_text(encoding="utf-8"))


def test_every_method_has_a_section(doc_sections):
    missing = [m for m in METHODS if m not in doc_sections]
    unknown = [m for m in doc_sections if m not in METHODS]
    assert not missing, f"docs/methods.md has no section for {missing}"
    assert not unknown, f"docs/methods.md has sections for unknown methods {unknown}"


def test_every_method_section_states_its_defaults(doc_sections):
    for name in METHODS:
        assert paragraphs(doc_sections[name], "Defaults"), f"{name}: no **Defaults:** paragraph"


@pytest.mark.parametrize("name", list(METHODS))
def test_defaults_lines_match_the_configs(doc_sections, name):
    section = doc_sections.get(name)
    if section is None:
        pytest.fail(f"docs/methods.md has no section for {name!r}")
    cls = METHODS[name][0]
    errors = check(name, section, "Defaults", cls)
    errors += check(name, section, "Toy", lambda: toy_config(name))
    if paragraphs(section, "Image"):
        errors += check(name, section, "Image", lambda: image_config(name))
    assert not errors, "\n".join(errors)


def test_the_checker_catches_a_wrong_doc():
    """A section with a field the config lacks, or a wrong value, fails."""
    bad = "`sim`: x\n\n**Defaults:** `huber_c=2.0`, `no_such_field`.\n\n**Toy:** `lr=3e-4`.\n"
    section = sections("## " + bad)["sim"]
    errors = check("sim", section, "Defaults", METHODS["sim"][0])
    assert any("no field 'no_such_field'" in e for e in errors)
    assert any("huber_c=2.0" in e for e in errors)
    assert not check("sim", section, "Toy", lambda: toy_config("sim"))


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_sampler_sections_state_the_function_defaults(sampler_sections, name):
    section = sampler_sections.get(name)
    assert section is not None, f"docs/methods.md has no section whose heading names `{name}`"
    assert paragraphs(section, "Defaults"), f"{name}: no **Defaults:** paragraph"
    errors = check_function(name, section, FUNCTIONS[name])
    assert not errors, "\n".join(errors)


def test_the_function_checker_catches_a_wrong_doc():
    """A sampler section with a keyword the function lacks, or a wrong default, fails."""
    bad = (
        "## Learned: `learn_sampler` (x)\n\n**Defaults:** `lr=0.5`, `no_such_keyword`, "
        '`method="lsd"`.\n'
    )
    section = function_sections(bad)["learn_sampler"]
    errors = check_function("learn_sampler", section, search.learn_sampler)
    assert any("no field 'no_such_keyword'" in e for e in errors)
    assert any("lr=0.5" in e for e in errors)
    assert len(errors) == 2
    # `noise` has no default: it is not a documented default
    section = function_sections("## L: `learn_sampler`\n\n**Defaults:** `noise`.\n")
    assert check_function("learn_sampler", section["learn_sampler"], search.learn_sampler)
