"""The command line's gene request: highlighted genes and one gene set (``--highlight`` / ``--gene-set``),
resolved against the model before any work, and the tables it writes next to a comparison's figures.
Pure core: no Qt, no napari."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ._gene_io import load_gene_set, parse_gene_list
from ._utils import write_csv
from .errors import DataError
from .genesets import gene_values, resolve_genes, set_scores

__all__ = ["GeneRequest", "gene_outputs", "gene_request"]


@dataclass
class GeneRequest:
    """Highlighted genes and one gene set, resolved to the model's genes (see :func:`gene_request`)."""

    highlight: list[str] = field(default_factory=list)
    set_name: str | None = None
    set_genes: list[str] = field(default_factory=list)
    set_match: Any = None  # the GeneMatch of the set's genes

    def notes(self) -> list[str]:
        """Progress lines: what was found, and the set genes left out."""
        out = [f"highlighting {', '.join(self.highlight)}"] if self.highlight else []
        m = self.set_match
        if m is not None:
            out.append(f"gene set {self.set_name}: {len(self.set_genes)} of its {len(m.queries)} genes are in the model"
                       + (f"; not in the model: {m.missing_text(5)}" if m.missing else ""))
        return out

    def summary(self) -> dict:
        m = self.set_match
        return {"highlight": list(self.highlight), "gene_set": None if m is None else {
            "name": self.set_name, "genes": list(self.set_genes), "not_in_model": list(m.missing)}}


def gene_request(model_or_genes, var=None, highlight=None, gene_set_file=None,
                 gene_set_name: str | None = None) -> GeneRequest:
    """Resolve highlighted genes and a gene-set file against the model's genes, before any work.

    ``highlight``: gene names (a string is split like :func:`parse_gene_list`); every one must
    match (:class:`GeneNotFoundError` with suggestions otherwise).  ``gene_set_file``: a path, may
    end in ``:SETNAME`` (:func:`load_gene_set`); set genes outside the model are left out (noted),
    a set with none in the model is a DataError.
    """
    req = GeneRequest()
    if gene_set_name is not None and gene_set_file is None:
        raise DataError(f"A gene-set name ({gene_set_name!r}) was given without a gene-set file: give the file "
                        "too (command line: --gene-set FILE).")
    if parse_gene_list(highlight):
        req.highlight = resolve_genes(highlight, model_or_genes, var=var, strict=True).found
    if gene_set_file is not None:
        req.set_name, genes = load_gene_set(gene_set_file, gene_set_name)
        req.set_match = resolve_genes(genes, model_or_genes, var=var)
        req.set_genes = req.set_match.found
        if not req.set_genes:
            raise DataError(f"None of the {len(genes)} genes of the set {req.set_name!r} is among the model's "
                            f"genes ({req.set_match.message()}). Use a set written in the model's gene "
                            "identifiers, or data whose var holds both symbols and Ensembl IDs.")
    return req


def gene_outputs(comparison, request: GeneRequest, out, stem: str, model=None, adata=None):
    """Write ``<stem>_gene_values.csv`` (:func:`gene_values` of the highlighted genes) and
    ``<stem>_set_scores.csv`` (:func:`set_scores` of the set, with a ``set`` column) into the folder
    ``out``.  Returns ``(paths, figure keyword arguments)`` for :func:`~napari_scmedal.figures.comparison_figure`."""
    files: list[str] = []
    kw: dict[str, Any] = {}
    if request.highlight:
        values = gene_values(comparison, request.highlight)
        files.append(write_csv(values, os.path.join(out, f"{stem}_gene_values.csv")))
        kw["highlight"] = request.highlight
    if request.set_genes:
        scores = set_scores(comparison, request.set_genes, model=model, adata=adata)
        table = scores.copy()
        table.insert(2, "set", request.set_name)
        files.append(write_csv(table, os.path.join(out, f"{stem}_set_scores.csv")))
        kw.update(gene_set=request.set_genes, gene_set_name=request.set_name, set_scores=scores)
    return files, kw

