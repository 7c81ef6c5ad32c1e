"""Declared dependencies are the imported ones; other libraries' private APIs are used in cpembed._compat only."""

import ast
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import cpembed as cpe
from cpembed._compat import EXTRAS
from cpembed.model._trainer import training_device

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "src" / "cpembed"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _trees() -> dict[Path, ast.Module]:
    return {path: ast.parse(path.read_text(), filename=str(path)) for path in sorted(SOURCE.rglob("*.py"))}


def _imported_modules(tree: ast.Module) -> set[str]:
    """Absolute module names a file imports, at module level or inside functions."""
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
    return modules


def _third_party(module: str) -> bool:
    top = module.partition(".")[0]
    return top not in sys.stdlib_module_names and top not in {"cpembed", "__future__"}


def _distributions(modules: set[str]) -> set[str]:
    """The installed distributions providing the top-level packages of ``modules``, canonical names."""
    providers = packages_distributions()
    return {canonicalize_name(dist) for module in modules for dist in providers[module.partition(".")[0]]}


def _names(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(requirement).name) for requirement in requirements}


def test_runtime_dependencies_are_exactly_the_imported_ones():
    runtime = _names(PYPROJECT["dependencies"])
    optional = _names(PYPROJECT["optional-dependencies"]["images"])
    modules = {module for tree in _trees().values() for module in _imported_modules(tree) if _third_party(module)}
    extra_modules = {module for module in modules if module.partition(".")[0] in EXTRAS["images"]}
    imported = _distributions(modules - extra_modules)
    assert sorted(runtime - imported) == [], "declared at run time but imported by no module of cpembed"
    assert sorted(imported - runtime) == [], "imported by cpembed but not declared at run time"
    assert _distributions(extra_modules) <= optional
    assert _names(["scib-metrics", "copairs"]) <= _names(PYPROJECT["optional-dependencies"]["test"]) - runtime


def test_other_libraries_private_api_is_used_in_compat_only():
    """No module but ``_compat.py`` imports a private module or name, or reads a private attribute, of a library.

    A private attribute is one whose name starts with one underscore and that cpembed defines nowhere; attributes of
    ``self`` and ``cls`` are base-class methods a model calls on itself, as scvi-tools' model-building tutorial does
    (``_get_init_params``, ...).
    """
    trees = _trees()
    defined = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.ClassDef):
                defined.add(node.name)
            elif isinstance(node, ast.Name | ast.Attribute) and isinstance(node.ctx, ast.Store):
                defined.add(node.id if isinstance(node, ast.Name) else node.attr)
    found = []
    for path, tree in trees.items():
        if path.name == "_compat.py":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom) and not getattr(node, "level", 0):
                names = [alias.name for alias in node.names]
                dotted = ([node.module] if isinstance(node, ast.ImportFrom) else names)[0]
                parts = dotted.split(".") + (names if isinstance(node, ast.ImportFrom) else [])
                if _third_party(dotted) and any(part.startswith("_") for part in parts):
                    found.append(f"{path.relative_to(SOURCE)}:{node.lineno} {ast.unparse(node)}")
            elif (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and node.attr not in defined
                and not (isinstance(node.value, ast.Name) and node.value.id in {"self", "cls"})
            ):
                found.append(f"{path.relative_to(SOURCE)}:{node.lineno} {ast.unparse(node)}")
    assert not found, "private APIs of other libraries used outside cpembed/_compat.py:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("call", "missing"),
    [
        (lambda adata, path: cpe.io.build_image_store(adata, path), "tifffile"),
        (lambda adata, path: cpe.io.build_image_store(adata, path), "imagecodecs"),
        (lambda adata, path: cpe.tl.segment_cells(adata, image_store=path), "skimage"),
        (lambda adata, path: cpe.tl.handcrafted_features(adata, image_store=path), "skimage"),
    ],
)
def test_missing_images_extra_says_how_to_install_it(call, missing, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, missing, None)  # what an environment without the module looks like to import
    with pytest.raises(ImportError, match=rf"needs {missing} .*install `cpembed\[images\]`"):
        call(ad.AnnData(np.zeros((1, 1))), tmp_path / "store.h5")


def test_training_device_follows_lightning_names():
    assert training_device("cpu", "auto") == ("cpu", 1, torch.device("cpu"))
    assert training_device("cpu", 2) == ("cpu", 2, torch.device("cpu"))
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert training_device("auto", "auto") == (expected, 1, torch.device(expected, 0 if expected == "cuda" else None))
    with pytest.raises(ValueError, match="not one of Lightning's accelerators"):
        training_device("quantum", "auto")
