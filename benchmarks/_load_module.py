"""Load ``src/cpembed/module`` by file path, so speed scripts run with torch alone (no anndata/scanpy import)."""

import importlib.util
import sys
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parents[1] / "src" / "cpembed" / "module"


def load_cpembed_module(name: str = "cpembed_module"):
    """Import the ``cpembed.module`` package from its folder under the name ``name`` (cached in ``sys.modules``)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, MODULE_DIR / "__init__.py", submodule_search_locations=[str(MODULE_DIR)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
