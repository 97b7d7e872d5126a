"""napari GUI layer of napari-scmedal: reader, writer, sample data and dock widgets.

This subpackage is the only place in napari-scmedal that imports napari or Qt. Widgets here only
gather parameters, run core functions in worker threads, report progress and turn results into
layers; every computation lives in the core (``napari_scmedal.*``).
"""
