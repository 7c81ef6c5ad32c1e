"""The analysis namespaces import without the deep-learning stack, which loads only when a model is used."""

import subprocess
import sys

#: Packages that are slow to import and that ``pp``, ``tl`` and ``bm`` must load only inside the functions that
#: need them.
DEFERRED = ["jax", "lightning", "pynndescent", "scanpy", "scib_metrics", "scvi", "torch", "umap"]


def test_pp_tl_bm_leave_the_deep_learning_stack_unimported():
    code = (
        "import sys\n"
        "import cpembed as cpe\n"
        "cpe.pp, cpe.tl, cpe.bm\n"
        f"print(' '.join(name for name in {DEFERRED!r} if name in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert result.stdout.split() == []
