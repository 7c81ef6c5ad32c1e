"""The API reference (docs/api.md) lists exactly the public names of every namespace."""

import re
from importlib import import_module
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
NAMESPACES = ("io", "datasets", "pp", "tl", "pl", "bm", "model", "module")
# An autosummary entry: an indented "namespace.name" line inside an autosummary block.
ENTRY = re.compile(r"^\s+(\w+)\.(\w+)\s*$", re.MULTILINE)


def autosummary_entries(text: str) -> set[tuple[str, str]]:
    return set(ENTRY.findall(text))


@pytest.fixture(scope="module")
def api_entries() -> set[tuple[str, str]]:
    return autosummary_entries((DOCS / "api.md").read_text())


def test_entry_pattern_reads_autosummary_lines():
    text = ".. autosummary::\n   :toctree: generated\n\n   pp.recipe_jump\n   bm.MAPResult\nprose pp.not_an_entry\n"
    assert autosummary_entries(text) == {("pp", "recipe_jump"), ("bm", "MAPResult")}


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_every_public_name_is_documented(namespace, api_entries):
    public = set(import_module(f"cpembed.{namespace}").__all__)
    documented = {name for ns, name in api_entries if ns == namespace}
    missing = sorted(public - documented)
    assert not missing, f"docs/api.md lacks cpembed.{namespace}: {missing}"


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_every_documented_name_is_public(namespace, api_entries):
    public = set(import_module(f"cpembed.{namespace}").__all__)
    documented = {name for ns, name in api_entries if ns == namespace}
    stale = sorted(documented - public)
    assert not stale, f"docs/api.md lists names that are not in cpembed.{namespace}.__all__: {stale}"


def test_api_covers_only_known_namespaces(api_entries):
    assert {ns for ns, _ in api_entries} == set(NAMESPACES)
    assert set(NAMESPACES) == set(import_module("cpembed").__all__)


def test_index_toctree_pages_exist():
    index = (DOCS / "index.md").read_text()
    toctree = index.split("```{toctree}")[1].split("```")[0]
    pages = [line.strip() for line in toctree.splitlines() if line.strip() and not line.strip().startswith(":")]
    assert pages, "docs/index.md has an empty toctree"
    for page in pages:
        assert (DOCS / f"{page}.md").exists(), f"docs/index.md lists {page!r} but docs/{page}.md does not exist"


def test_files_the_pages_include_exist():
    # csv-table :file:, image, include and literalinclude paths, relative to docs/.
    directive = re.compile(r"^```\{(?:image|include|literalinclude)\} (\S+)$|^:file: (\S+)$", re.MULTILINE)
    referenced = []
    for page in DOCS.glob("*.md"):
        for match in directive.finditer(page.read_text()):
            referenced.append((page.name, match.group(1) or match.group(2)))
    assert any(path.startswith("_static/benchmarks/") for _, path in referenced)
    missing = [(page, path) for page, path in referenced if not (DOCS / path).is_file()]
    assert not missing, f"pages include files that do not exist (run docs/make_benchmark_tables.py): {missing}"
