"""The plugin contract stays documented and tested (as Datasette does for its hooks).

* every hook specification has a ``### <hook>`` section in docs/plugin-hooks.md with its exact signature;
* every hook is exercised by some test: its name appears in the test sources (Concord's and the example
  lens's), outside this file;
* every validation problem code is listed in docs/plugin-hooks.md.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from concord_core.plugins import hookspecs
from concord_core.plugins.markers import PROJECT_NAME
from concord_core.plugins.problems import ProblemCode

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "plugin-hooks.md"


def hook_specs() -> dict[str, Callable[..., Any]]:
    """The hook specifications: the ``concord_*`` functions defined in hookspecs.py."""
    return {
        name: func
        for name, func in inspect.getmembers(hookspecs, inspect.isfunction)
        if name.startswith("concord_") and func.__module__ == hookspecs.__name__
    }


class _Annotation(str):
    """An annotation kept as written: hookspecs.py postpones evaluation, and inspect would quote it."""

    def __repr__(self) -> str:
        return str(self)


def signature_text(func: Callable[..., Any]) -> str:
    """``name(params) -> return``, with annotations as they are written in the source."""
    signature = inspect.signature(func)

    def written(annotation: Any) -> Any:
        return _Annotation(annotation) if isinstance(annotation, str) else annotation

    signature = signature.replace(
        parameters=[p.replace(annotation=written(p.annotation)) for p in signature.parameters.values()],
        return_annotation=written(signature.return_annotation),
    )
    return f"{func.__name__}{signature}"


def doc_sections() -> dict[str, str]:
    """docs/plugin-hooks.md's ``### heading`` sections, each up to the next heading of level 1 to 3."""
    sections: dict[str, str] = {}
    parts = re.split(r"^(#{1,3}) +(.+?) *$", DOC.read_text("utf-8"), flags=re.MULTILINE)
    for level, heading, body in zip(parts[1::3], parts[2::3], parts[3::3], strict=True):
        if level == "###":
            sections[heading.strip("` ")] = body
    return sections


def test_there_are_hooks_and_they_are_hook_specifications() -> None:
    specs = hook_specs()
    assert {"concord_lens_manifest", "concord_graphql_types", "concord_job_handlers"} <= set(specs)
    for name, func in specs.items():
        assert hasattr(func, f"{PROJECT_NAME}_spec"), f"{name} is not marked with @hookspec"
        assert func.__doc__ and "\n" not in func.__doc__.strip(), f"{name} needs a one-line docstring"


def test_signature_text_is_as_written() -> None:
    assert signature_text(hook_specs()["concord_job_handlers"]) == (
        "concord_job_handlers() -> Mapping[str, JobHandler]"
    )


@pytest.mark.parametrize("name", sorted(hook_specs()))
def test_every_hook_is_documented_with_its_exact_signature(name: str) -> None:
    sections = doc_sections()
    assert name in sections, f"docs/plugin-hooks.md has no '### {name}' section"
    expected = signature_text(hook_specs()[name])
    assert expected in sections[name], (
        f"the '### {name}' section of docs/plugin-hooks.md does not show its signature: {expected}"
    )


def scanned_sources() -> list[Path]:
    """Concord's test sources and every example lens's, this file excepted."""
    found = [*ROOT.glob("tests/**/*.py"), *ROOT.glob("examples/*/tests/**/*.py")]
    return [path for path in found if path.resolve() != Path(__file__).resolve()]


def test_every_hook_is_exercised_by_a_test() -> None:
    sources = {path: path.read_text("utf-8") for path in scanned_sources()}
    assert any("examples" in path.parts for path in sources), "the example lens's tests were not found"
    untested = sorted(
        name for name in hook_specs() if not any(re.search(rf"\b{name}\b", text) for text in sources.values())
    )
    assert not untested, (
        "hooks that no test exercises (no test source under tests/ or examples/*/tests/ mentions them): "
        + ", ".join(untested)
    )


def test_every_problem_code_is_documented() -> None:
    text = DOC.read_text("utf-8")
    missing = [code.value for code in ProblemCode if f"`{code.value}`" not in text]
    assert not missing, f"problem codes missing from docs/plugin-hooks.md: {', '.join(missing)}"
