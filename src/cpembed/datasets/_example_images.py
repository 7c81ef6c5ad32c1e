"""A small real Cell Painting field bundled with the package, for examples and tests of the image pipeline."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

#: Phenix channel numbers of the bundled field -> Cell Painting stain (JUMP-Cell Painting channel order).
EXAMPLE_CHANNELS = {"2": "ER", "3": "AGP", "4": "Mito", "5": "DNA", "6": "RNA"}


def example_images() -> Path:
    """Folder with one real 5-channel Cell Painting field (224 x 224 crop, uint16 LZW TIFFs, Phenix names).

    Plate BR00143976, well C03, site 3 of the pediatric cancer atlas profiling (JUMP-style) test data of
    cytomining/CytoDataFrame (BSD-3-Clause, licence beside the files). Read it with
    ``cpembed.io.read_images(example_images(), plate="BR00143976", channel_names=EXAMPLE_CHANNELS)``.
    """
    return Path(str(files("cpembed.datasets") / "data" / "images" / "BR00143976_C03_3"))
