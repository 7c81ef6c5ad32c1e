"""Saving models in scvi-tools' file layout, in a form that loads with ``torch.load(..., weights_only=True)``.

scvi-tools pickles a model's attributes (numpy arrays, DataFrames) into ``model.pt`` and loads the file with
``weights_only=False``, which runs whatever code an untrusted file holds. Here the attributes are written as plain
containers (dicts, lists, tuples, strings, numbers, tensors) that PyTorch's restricted unpickler accepts; arrays and
DataFrames carry a marker and are rebuilt on load. The file keeps scvi-tools' keys (``model_state_dict``,
``var_names``, ``attr_dict``) and its name, ``<prefix>model.pt``, beside an optional ``<prefix>adata.h5ad``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .._files import staged_folder

#: File names of a saved model (scvi-tools' ``SAVE_KEYS``), after the prefix.
MODEL_FILE = "model.pt"
ADATA_FILE = "adata.h5ad"
_ARRAY, _FRAME = "__ndarray__", "__dataframe__"


def encode(value: Any) -> Any:
    """``value`` with every numpy array, numpy scalar and DataFrame turned into containers of plain values."""
    if isinstance(value, dict):
        return {key: encode(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(encode(item) for item in value)
    if isinstance(value, np.ndarray):
        return {_ARRAY: value.tolist(), "dtype": value.dtype.str}
    if isinstance(value, pd.DataFrame):
        return {_FRAME: value.to_dict(orient="tight")}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, str | int | float | bool | torch.Tensor):
        return value
    raise TypeError(f"Cannot save a {type(value).__name__} in a model file; only arrays, tables and plain values.")


def decode(value: Any) -> Any:
    """Undo :func:`encode`."""
    if isinstance(value, dict):
        if _ARRAY in value:
            return np.asarray(value[_ARRAY], dtype=np.dtype(value["dtype"]))
        if _FRAME in value:
            return pd.DataFrame.from_dict(value[_FRAME], orient="tight")
        return {key: decode(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(decode(item) for item in value)
    return value


def check_save_folder(folder: Path, overwrite: bool) -> None:
    """Raise a FileExistsError when a save may not replace ``folder``.

    That is when ``folder`` exists and ``overwrite`` is off, or when it holds files that are not saved models, which
    the save would delete (it replaces the folder as a whole).
    """
    if folder.exists():
        if not overwrite:
            raise FileExistsError(f"{folder} already exists; pass overwrite=True to replace it.")
        others = [
            entry.name
            for entry in (folder.iterdir() if folder.is_dir() else [folder])
            if not entry.name.endswith((MODEL_FILE, ADATA_FILE))
        ]
        if others:
            raise FileExistsError(
                f"{folder} holds files that are not a saved model ({others[:5]}), which overwrite=True would "
                "delete; save into a new or empty folder."
            )


def save_model(
    model, dir_path: str | Path, prefix: str | None, overwrite: bool, save_anndata: bool, **anndata_write_kwargs
) -> None:
    """Write ``model`` (an scvi-tools model) to the folder ``dir_path``, whole or not at all.

    The weights, the feature names and every attribute whose name ends in ``_`` (scvi-tools' rule) go to
    ``<prefix>model.pt``; with ``save_anndata`` the model's AnnData goes to ``<prefix>adata.h5ad``. The files are
    written to a temporary folder that replaces ``dir_path`` at the end, so a failed save leaves it as it was.
    ``overwrite`` replaces an existing ``dir_path``, which must then hold saved models only.
    """
    folder, file_prefix = Path(dir_path), prefix or ""
    check_save_folder(folder, overwrite)
    attributes = {name: value for name, value in vars(model).items() if name.endswith("_") and name[0] != "_"}
    content = {
        "model_state_dict": {name: tensor.detach().cpu() for name, tensor in model.module.state_dict().items()},
        "var_names": model.adata.var_names.astype(str).tolist(),
        "attr_dict": encode(attributes),
    }
    with staged_folder(folder) as staging:
        torch.save(content, staging / f"{file_prefix}{MODEL_FILE}")
        if save_anndata:
            model.adata.write_h5ad(staging / f"{file_prefix}{ADATA_FILE}", **anndata_write_kwargs)


def load_model_file(dir_path: str | Path, prefix: str | None, model_name: str) -> dict[str, Any]:
    """The content of ``<prefix>model.pt`` in ``dir_path``, read with ``weights_only=True`` and decoded.

    Raises a FileNotFoundError naming the file when it is missing and a ValueError when it holds another class's
    model.
    """
    model_file = Path(dir_path) / f"{prefix or ''}{MODEL_FILE}"
    if not model_file.is_file():
        raise FileNotFoundError(
            f"No saved {model_name} model at {model_file}: pass the folder written by model.save(dir_path)"
            f"{' and its prefix' if prefix else ''}."
        )
    content = torch.load(model_file, map_location="cpu", weights_only=True)
    content["attr_dict"] = decode(content["attr_dict"])
    saved_name = content["attr_dict"]["registry_"].get("model_name")
    if saved_name != model_name:
        raise ValueError(f"{model_file} holds a {saved_name} model, not a {model_name} one.")
    return content
