"""Signature rules every public AnnData function follows (scanpy's conventions, see docs/contributing.md)."""

import inspect

import pytest

import cpembed as cpe

ANNDATA_NAMESPACES = ["pp", "tl", "pl"]
# Plots of results rather than of wells: they take a table or a trained model, not an AnnData.
NOT_ANNDATA_FIRST = {"pl.benchmark_table", "pl.training_history"}


def _public_functions():
    for namespace in ANNDATA_NAMESPACES:
        module = getattr(cpe, namespace)
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isfunction(obj):
                yield pytest.param(obj, id=f"{namespace}.{name}")


PUBLIC_FUNCTIONS = list(_public_functions())


def test_every_namespace_exports_something():
    for namespace in [*ANNDATA_NAMESPACES, "io", "datasets", "bm", "model", "module"]:
        module = getattr(cpe, namespace)
        assert module.__all__, namespace
        for name in module.__all__:
            assert hasattr(module, name), f"cpe.{namespace}.{name} is listed in __all__ but missing"


@pytest.mark.parametrize("func", [f for f in PUBLIC_FUNCTIONS if f.id not in NOT_ANNDATA_FIRST])
def test_first_parameter_is_adata(func):
    first = next(iter(inspect.signature(func).parameters))
    assert first == "adata"


@pytest.mark.parametrize("func", PUBLIC_FUNCTIONS)
def test_at_most_three_positional_parameters(func):
    positional = [
        p for p in inspect.signature(func).parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    assert len(positional) <= 3, [p.name for p in positional]


@pytest.mark.parametrize("func", PUBLIC_FUNCTIONS)
def test_booleans_and_copy_are_keyword_only(func):
    for parameter in inspect.signature(func).parameters.values():
        if parameter.name == "copy" or isinstance(parameter.default, bool):
            assert parameter.kind == parameter.KEYWORD_ONLY, parameter.name


@pytest.mark.parametrize("func", PUBLIC_FUNCTIONS)
def test_documented(func):
    doc = inspect.getdoc(func)
    assert doc, "missing docstring"
    for parameter in inspect.signature(func).parameters:
        if parameter not in {"kwargs", "args"}:
            assert parameter in doc, f"parameter {parameter!r} is not documented"
