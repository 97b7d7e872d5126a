"""The model widget's latent layers: one points layer per latent (FE, FEC, RE) of the current model, placed
side by side right of its cells layer (2-D PCA of the latent), coloured by batch or label, with a legend.

Layers are added and removed one per step (generators run by :class:`._common.StepRunner`, one napari layer
per event-loop turn); the latents themselves come from the core (:meth:`napari_scmedal.ScMEDAL.
get_latent_representation`) or from the training process.
"""

from __future__ import annotations

from ._common import MODEL_KEY
from ._layers import ADATA_KEY, cells_layer_data, color_cycle, legend_layer_data

LATENT_NAMES = {"fe": "FE latent", "fec": "FEC latent", "re": "RE latent"}


def color_key(model, color_by: str) -> str:
    """The obs column to colour latents by: the label key when ``color_by`` is "label" and the model has one,
    else the batch key."""
    recipe = model.recipe
    if color_by == "label" and recipe.label_key:
        return recipe.label_key
    return recipe.batch_key


class LatentLayers:
    """The latent layers of a viewer's current model (``layers``) and their legend."""

    def __init__(self, viewer):
        self.viewer = viewer
        self.layers = []

    def shown(self) -> list:
        """The latent layers still in the viewer."""
        return [ly for ly in self.layers if ly in self.viewer.layers]

    def remove_steps(self, model):
        """Generator removing the latent layers and legend of a replaced ``model`` (e.g. its FEC/RE layers when
        the new model has only FE), one layer per step, so that no layer offers a stale model to the explorer."""
        if model is None:
            return
        for ly in list(self.viewer.layers):
            if ly.metadata.get(MODEL_KEY) is model and (ly.metadata.get("latent") is not None
                                                        or ly.metadata.get("scmedal_legend")):
                if ly in self.viewer.layers:
                    self.viewer.layers.remove(ly)
                yield
        self.layers = self.shown()

    def add_steps(self, layer, model, latents, key):
        """Generator adding one latent layer per step (``latents``: ``{kind: (Z, 2-D PCA)}``), side by side
        right of the cells layer ``layer``, coloured by the obs column ``key``, then the legend."""
        adata = layer.metadata[ADATA_KEY]
        self.layers = []
        x = layer.extent.world[1][1]
        for kind, (Z, Y) in latents.items():
            name = f"{layer.name} | {LATENT_NAMES[kind]}"
            data, kwargs, _ = cells_layer_data(
                adata, name=name, coords=Y, color_by=key, source=f"PCA of the {kind.upper()} latent",
                extra_metadata={"latent": kind, "latent_values": Z, MODEL_KEY: model},
                batch_key=model.recipe.batch_key,
            )
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
            new = self.viewer.add_points(data, **kwargs)
            self.layers.append(new)
            (y0, x0), (_, x1) = new.extent.world
            new.translate = (layer.extent.world[0][0] - y0, x + 0.1 * (x1 - x0) - x0)
            x = new.extent.world[1][1]
            yield
        self.show_legend(layer, model, key)

    def show_legend(self, layer, model, key) -> None:
        """Titles over the latent clouds and a colour legend (``key``) beside them (one points layer)."""
        lats = self.shown()
        name = f"{layer.name} | latent legend"
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        if not lats or key not in lats[0].features.columns:
            return
        titles = [f"{LATENT_NAMES[ly.metadata['latent']]} (PCA)" for ly in lats]
        data, kwargs, _ = legend_layer_data(lats, key, name, titles)
        kwargs["metadata"][MODEL_KEY] = model
        self.viewer.add_points(data, **kwargs)

    def recolor(self, layer, model, key) -> None:
        """Colour the latent layers by the obs column ``key`` and redraw the legend (``layer``: the cells
        layer of ``model``, None to skip the legend)."""
        for ly in self.layers:
            if ly in self.viewer.layers and key in ly.features.columns:
                ly.face_color_cycle = color_cycle(ly.features, key, model.recipe.batch_key)
                ly.face_color = key
        if layer is not None:
            self.show_legend(layer, model, key)
