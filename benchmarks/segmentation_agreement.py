"""cpe.tl.segment_cells against CellProfiler's own masks of real NF1 Cell Painting fields.

Reads the DAPI and RFP images of each field (file names ``<well>_<series>_<n>_<site>_<channel>_<frame>.tif``), builds
an image store, segments it with cpe.tl.segment_cells (nuclei 20-100 px across, Otsu, border nuclei discarded as
CellProfiler did) and compares with CellProfiler's binary masks ``<image>_MaskNuclei.tiff`` and
``<RFP image>_MaskCells.tiff``: the number of separate nuclei, how many of CellProfiler's objects segment_cells
splits (its masks are binary, so touching nuclei merge into one object), and the Dice coefficient of the nucleus and
cell foregrounds. The default folders hold the one field bundled with the tests; the NF1 test data of
cytomining/CytoDataFrame has five:
    python benchmarks/segmentation_agreement.py \\
        --images ../shared/data/images/NF1_cellpainting_data_shrunken/Plate_2_images \\
        --masks ../shared/data/images/NF1_cellpainting_data_shrunken/Plate_2_masks
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from scipy import ndimage

import cpembed as cpe

BUNDLED = Path(__file__).resolve().parents[1] / "tests" / "data" / "nf1_segmentation"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def objects_split(reference: np.ndarray, n_reference: int, nuclei: np.ndarray) -> int:
    """How many objects of ``reference`` overlap two or more of ``nuclei`` (touching nuclei a binary mask merges)."""
    pairs = np.unique(np.stack([reference.ravel(), nuclei.ravel()]), axis=1)
    pairs = pairs[:, (pairs[0] > 0) & (pairs[1] > 0)]
    return int((np.bincount(pairs[0], minlength=n_reference + 1) > 1).sum())


def cellprofiler_mask(folder: Path, path: str, suffix: str) -> np.ndarray:
    return tifffile.imread(folder / f"{Path(path).stem}_{suffix}.tiff")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=BUNDLED)
    parser.add_argument("--masks", type=Path, default=BUNDLED)
    args = parser.parse_args()
    fields = cpe.io.read_images(args.images, pattern="well_site_channel", plate="NF1")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        store = cpe.io.build_image_store(fields, Path(folder) / "store.h5", channels=["DAPI", "RFP"])
        cpe.tl.segment_cells(store, nucleus_channel="DAPI", nucleus_diameter=(20, 100))
        path = store.uns["image_store"]["path"]
        for (_, field), index in zip(fields.obs.iterrows(), store.obs["image_index"], strict=True):
            nuclei = cpe.io.read_store_images(path, [index], "masks/nuclei")[0]
            cells = cpe.io.read_store_images(path, [index], "masks/cells")[0]
            reference_nuclei = cellprofiler_mask(args.masks, field["FileName_OrigDAPI"], "MaskNuclei")
            reference_cells = cellprofiler_mask(args.masks, field["FileName_OrigRFP"], "MaskCells")
            reference_objects, n_reference = ndimage.label(reference_nuclei)
            rows.append(
                {
                    "field": f"{field['Metadata_Well']} site {field['Metadata_Site']}",
                    "nuclei, CellProfiler": n_reference,
                    "nuclei, segment_cells": int(nuclei.max()),
                    "CellProfiler objects split": objects_split(reference_objects, n_reference, nuclei),
                    "nucleus Dice": dice(nuclei, reference_nuclei),
                    "cell Dice": dice(cells, reference_cells),
                }
            )
    table = pd.DataFrame(rows).set_index("field")
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    print(
        "\nCellProfiler's count: separate objects of its binary mask, where touching nuclei make one object; 'split':"
        " those objects that segment_cells divides between two or more nuclei."
    )


if __name__ == "__main__":
    main()
