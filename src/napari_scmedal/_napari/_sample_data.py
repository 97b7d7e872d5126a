"""npe2 sample data: the bundled CellBench sample as a cells layer."""

from __future__ import annotations

from ._layers import cells_layer_data


def cellbench_sample():
    """The CellBench sample (real data, 5 batches, 5 cell lines) as one cells Points layer."""
    from napari_scmedal.datasets import cellbench

    adata = cellbench()
    return [cells_layer_data(adata, name="CellBench sample", extra_metadata={"source_path": "sample:cellbench"})]
