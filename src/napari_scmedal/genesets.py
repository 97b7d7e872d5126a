"""Find genes and gene sets on the genomaps: names, gene-set files, pixels, values and set scores.

* :func:`resolve_genes` matches what a user typed to the model's genes: exactly, then ignoring
  case, then through the ``var`` columns of the data (e.g. Ensembl IDs for a model trained on
  symbols, or the reverse); names that match nothing get close model genes as suggestions.
* :func:`parse_gene_list`, :func:`read_gene_sets` and :func:`load_gene_set` read pasted lists,
  text, CSV/TSV and GMT files.
* :func:`gene_pixels`, :func:`gene_set_mask` and :func:`outline_segments` place genes on the
  genomap grid; the outline (pixel edges of the set's union) is what the figures and the GUI draw.
* :func:`gene_values` gives a gene's value in every image of a
  :class:`~napari_scmedal.compare.Comparison`; :func:`set_scores` the mean z-score of a set's
  genes per row and image (its change in the difference images).
* :func:`cell_expression` gives one gene's per-cell expression in genomap units (to colour cells).

Pure core: no Qt, no napari.
"""
from __future__ import annotations

import difflib
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ._gene_io import load_gene_set, parse_gene_list, read_gene_sets  # re-exported
from .data.recipe import _text_columns
from .errors import DataError, ScMEDALError
from .versions import version_key

__all__ = [
    "GeneMatch",
    "GeneNotFoundError",
    "cell_expression",
    "gene_pixels",
    "gene_set_mask",
    "gene_values",
    "load_gene_set",
    "outline_segments",
    "parse_gene_list",
    "read_gene_sets",
    "resolve_genes",
    "set_scores",
]

_VERSIONED_ID = re.compile(r"^(ens[a-z]*g\d+)\.\d+$")


class GeneNotFoundError(DataError):
    """Genes asked for are not among the model's; ``.match`` is the :class:`GeneMatch`."""

    def __init__(self, message: str, match: GeneMatch):
        super().__init__(message)
        self.match = match


# ----------------------------------------------------------------------------------------------
# matching names to the model's genes
# ----------------------------------------------------------------------------------------------
@dataclass
class GeneMatch:
    """What :func:`resolve_genes` found.

    Attributes
    ----------
    queries : the names asked for (duplicates and blanks removed), in order.
    found : the model genes they matched, in query order (no duplicates).
    missing : the queries that matched no model gene.
    suggestions : ``{missing query: [close model genes]}`` (possibly empty lists).
    matched : ``{query: model gene}`` for the queries that matched.
    n_model : how many genes the model has.
    """

    queries: list[str]
    found: list[str]
    missing: list[str]
    suggestions: dict[str, list[str]] = field(default_factory=dict)
    matched: dict[str, str] = field(default_factory=dict)
    n_model: int = 0

    @property
    def ok(self) -> bool:
        """True when every query matched a model gene."""
        return not self.missing

    def message(self) -> str:
        """One line for the user: what matched, what did not, and the close names offered."""
        if not self.queries:
            return "No gene names given: type or load at least one gene name."
        if not self.missing:
            return f"All {len(self.queries)} gene name(s) found among the model's {self.n_model} genes."
        return (f"{len(self.missing)} of {len(self.queries)} gene name(s) are not among the model's "
                f"{self.n_model} genes: {self.missing_text()}. Only the model's genes have a genomap pixel: "
                "check the spelling, use a suggested name, or give the identifier the model was trained on.")

    def missing_text(self, limit: int = 8) -> str:
        """The missing names with their suggestions: ``'MGPX' (did you mean MGP, GPX2?); ...``."""
        parts = []
        for q in self.missing[:limit]:
            s = self.suggestions.get(q) or []
            parts.append(f"{q!r} (did you mean {', '.join(s)}?)" if s else f"{q!r} (no close name)")
        more = f" and {len(self.missing) - limit} more" if len(self.missing) > limit else ""
        return "; ".join(parts) + more

    def raise_if_missing(self) -> GeneMatch:
        """Raise :class:`GeneNotFoundError` (a DataError) with :meth:`message` unless all matched."""
        if self.missing or not self.queries:
            raise GeneNotFoundError(self.message(), self)
        return self


def _key(name: str) -> str:
    """Matching key: lower case, Ensembl version suffix dropped (ENSG...123.4 -> ensg...123)."""
    k = str(name).strip().lower()
    m = _VERSIONED_ID.match(k)
    return m.group(1) if m else k


def _genes_of(model_or_genes) -> list[str]:
    genes = getattr(model_or_genes, "genes", model_or_genes)  # a model, a layout or a list
    return [str(g) for g in genes]


def _var_of(model_or_genes, var):
    if var is not None or not hasattr(model_or_genes, "recipe"):
        return var
    try:  # the model's own training data, when it carries it
        return getattr(model_or_genes._training_adata(None), "var", None)
    except (ScMEDALError, OSError):  # a loaded model without its data: no aliases
        return None


def _aliases(genes: Sequence[str], var) -> dict[str, str]:
    """``{key of any identifier in var: model gene}`` through the rows of ``var`` (var_names and
    its text columns); the column holding most model genes names each row's model gene."""
    if var is None or len(var) == 0:
        return {}
    cols = [pd.Index(pd.Index(var.index).astype(str))] + [c for _, c in _text_columns(var)]
    gset = set(genes)
    hits = [int(c.isin(gset).sum()) for c in cols]
    best = int(np.argmax(hits))
    if hits[best] == 0:
        return {}
    has = cols[best].isin(gset)
    model_at = cols[best].to_numpy()[has]
    out: dict[str, str] = {}
    for c in cols:
        for v, g in zip(c.to_numpy()[has], model_at):
            if v and v.lower() != "nan":
                out.setdefault(_key(v), str(g))
    return out


def _suggest(query: str, genes: Sequence[str], n: int = 5) -> list[str]:
    q = str(query).strip().upper()
    upper: dict[str, str] = {}
    for g in genes:
        upper.setdefault(g.upper(), g)
    prefix = sorted((g for u, g in upper.items() if len(q) >= 2 and u.startswith(q)), key=len)[:n]
    close = [upper[u] for u in difflib.get_close_matches(q, list(upper), n=n, cutoff=0.6)]
    return list(dict.fromkeys(close + prefix))[:n]


def resolve_genes(queries, model_or_genes, var: pd.DataFrame | None = None, strict: bool = False) -> GeneMatch:
    """Match gene names typed or loaded by a user to the model's genes.

    Each query is matched exactly, then ignoring case (and an Ensembl version suffix), then through
    ``var``: any of its identifier columns (or ``var_names``) is mapped, row by row, to the model
    gene of that row, so a set written in Ensembl IDs, symbols or a mix of both matches when
    ``var`` carries both.  Unmatched names get up to five close model genes as suggestions.

    Parameters
    ----------
    queries : str or iterable of str
        Gene names; a string is split like :func:`parse_gene_list` (commas, spaces, newlines...).
    model_or_genes : ScMEDAL, GenomapLayout or sequence of str
        Whose genes to match against (``.genes``).
    var : DataFrame, optional
        The data's ``adata.var`` for identifier columns; default: the model's training data's, when
        it carries it.
    strict : bool
        Raise :class:`GeneNotFoundError` (a :class:`~napari_scmedal.errors.DataError`) naming
        the missing genes and suggestions unless every query matched.

    Returns
    -------
    GeneMatch
        ``found`` (model gene names, in query order), ``missing``, ``suggestions``, ``matched``;
        ``.message()`` is the text to show the user.
    """
    queries = parse_gene_list(queries)
    genes = _genes_of(model_or_genes)
    exact = set(genes)
    by_key: dict[str, str] = {}
    for gene in genes:
        by_key.setdefault(_key(gene), gene)
    aliases = None
    found: list[str] = []
    matched: dict[str, str] = {}
    missing: list[str] = []
    for q in queries:
        g = q if q in exact else by_key.get(_key(q))
        if g is None:
            if aliases is None:
                aliases = _aliases(genes, _var_of(model_or_genes, var))
            g = aliases.get(_key(q))
        if g is None:
            missing.append(q)
            continue
        matched[q] = g
        if g not in found:
            found.append(g)
    match = GeneMatch(queries=queries, found=found, missing=missing,
                      suggestions={q: _suggest(q, genes) for q in missing}, matched=matched, n_model=len(genes))
    return match.raise_if_missing() if strict else match


# ----------------------------------------------------------------------------------------------
# genes on the genomap grid
# ----------------------------------------------------------------------------------------------
def _layout_names(layout, genes) -> list[str]:
    """``genes`` as the layout's gene names (exact or ignoring case); GeneNotFoundError otherwise."""
    return resolve_genes(genes, layout, var=None, strict=True).found


def gene_pixels(layout, genes) -> np.ndarray:
    """``(k, 2)`` int array: the (row, column) pixel of each gene on the genomap grid, in order.

    ``genes`` are layout (model) gene names, matched as by :func:`resolve_genes` without ``var``;
    unknown names raise :class:`GeneNotFoundError` with suggestions.
    """
    names = _layout_names(layout, genes)
    pos = pd.Index([str(g) for g in layout.genes]).get_indexer(names)
    return np.asarray(layout.pixel_of_gene, dtype=np.int64)[pos].reshape(-1, 2)


def gene_set_mask(layout, genes) -> np.ndarray:
    """``(rows, cols)`` bool image, True on the pixels of ``genes`` (layout gene names)."""
    mask = np.zeros(tuple(int(v) for v in layout.shape), dtype=bool)
    pix = gene_pixels(layout, genes)
    mask[pix[:, 0], pix[:, 1]] = True
    return mask


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    d = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)))


def outline_segments(mask: np.ndarray) -> np.ndarray:
    """Outline of the union of the True pixels: ``(m, 2, 2)`` float segments
    ``[[row0, col0], [row1, col1]]`` along pixel edges, in image coordinates (pixel centres at
    integers, edges at +-0.5, like ``imshow`` and napari).  Collinear edges are merged."""
    m = np.asarray(mask, dtype=bool)
    p = np.pad(m, 1)
    segs: list[tuple[tuple[float, float], tuple[float, float]]] = []
    horiz = p[1:, 1:-1] != p[:-1, 1:-1]  # (R + 1, C): the edge above row r
    for r in range(horiz.shape[0]):
        segs.extend(((r - 0.5, a - 0.5), (r - 0.5, b - 0.5)) for a, b in _runs(horiz[r]))
    vert = p[1:-1, 1:] != p[1:-1, :-1]  # (R, C + 1): the edge left of column c
    for c in range(vert.shape[1]):
        segs.extend(((a - 0.5, c - 0.5), (b - 0.5, c - 0.5)) for a, b in _runs(vert[:, c]))
    return np.asarray(segs, dtype=np.float64).reshape(-1, 2, 2)


# ----------------------------------------------------------------------------------------------
# values and set scores from a comparison
# ----------------------------------------------------------------------------------------------
def gene_values(comparison, genes) -> pd.DataFrame:
    """Each gene's value in every image of a comparison, one table row per (comparison row, gene).

    Returns
    -------
    DataFrame (wide)
        Columns ``row`` (the comparison's row), ``title`` (its row title), ``gene``, ``row_px``,
        ``col_px``, then one column per image, named and ordered as ``comparison.images``
        (Original, FE/RE reconstructions, each counterfactual, then the differences).  Values are
        in the comparison's units (``comparison.units``; also ``df.attrs["units"]``): log1p
        expression or per-gene z-scores.  ``df.melt(id_vars=[...])`` gives the long form.
    """
    names = _layout_names(comparison.layout, genes)
    pix = gene_pixels(comparison.layout, names)
    n, k = comparison.n_rows, len(names)
    df = pd.DataFrame({"row": np.repeat(np.arange(n), k),
                       "title": np.repeat(np.asarray(comparison.row_titles, dtype=object), k),
                       "gene": np.tile(np.asarray(names, dtype=object), n),
                       "row_px": np.tile(pix[:, 0], n), "col_px": np.tile(pix[:, 1], n)})
    for name, img in comparison.images.items():
        df[name] = np.asarray(img)[:, pix[:, 0], pix[:, 1]].astype(np.float64).reshape(-1)
    df.attrs["units"] = comparison.units
    return df


def _reference(names: list[str], model, adata, reference) -> tuple[np.ndarray, np.ndarray]:
    if reference is None:
        if model is None:
            raise DataError("This comparison is in log1p units and set scores are mean z-scores: pass the model "
                            "(set_scores(comp, genes, model=model)) to z-score against its reference stack, or "
                            "compare the cells with scale='zscore'.")
        from .genomap.ensure import zscore_reference

        mean, std = zscore_reference(model, fallback=adata)  # the reference compare_cells(scale="zscore") uses
        reference = pd.DataFrame({"mean": mean, "std": std}, index=[str(g) for g in model.genes])
    ref = reference.reindex(names)
    if ref[["mean", "std"]].isna().to_numpy().any():
        raise DataError("The z-score reference lacks some of the set's genes; use the model the comparison was "
                        "made with.")
    return ref["mean"].to_numpy(np.float64), ref["std"].to_numpy(np.float64)


def set_scores(comparison, genes, model=None, adata=None, reference: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per row and image, the mean z-score of a gene set's genes, and its change in each difference.

    Each gene is z-scored against the reference stack of :func:`~napari_scmedal.genomap.zscore_reference`
    (per-gene mean and std over the original, FE, RE and every counterfactual of reference cells;
    zero-variance genes score 0), the reference ``compare_cells(scale="zscore")`` uses.  A z-scored
    comparison's pixels already are these z-scores; a log1p comparison needs ``model`` (or
    ``reference``) to z-score them: ``z = (x - mean) / std`` on expression images, ``d / std`` on
    difference images.  Scores are means over the set's genes, so the score of a difference image
    is exactly the change of the score: ``Counterfactual -> b - Original`` = score(CF to b) -
    score(Original), ``... - Counterfactual -> own batch`` the change against the row's own batch.

    Parameters
    ----------
    comparison : Comparison
    genes : layout gene names (e.g. ``resolve_genes(...).found``).
    model, adata : for a log1p comparison: the model (and, for a model without its training data,
        the data) whose z-score reference to use.
    reference : DataFrame indexed by gene with ``mean`` and ``std`` columns, instead of the model's.

    Returns
    -------
    DataFrame (wide)
        One row per comparison row: ``row``, ``title``, ``n_genes``, then one column per image
        (named and ordered as ``comparison.images``): expression images hold the set score,
        difference images its change.  ``df.attrs["units"]`` says so.
    """
    names = _layout_names(comparison.layout, genes)
    pix = gene_pixels(comparison.layout, names)
    z_given = comparison.scale == "zscore"
    ref = None if z_given else _reference(names, model, adata, reference)
    df = pd.DataFrame({"row": np.arange(comparison.n_rows), "title": list(comparison.row_titles),
                       "n_genes": len(names)})
    for name, img in comparison.images.items():
        v = np.asarray(img)[:, pix[:, 0], pix[:, 1]].astype(np.float64)
        if ref is not None:  # log1p units: z-scored with the reference mean and standard deviation
            mean, std = ref
            v = (v - mean) / std if comparison.kinds[name] == "expression" else v / std
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a row without its own batch: NaN
            df[name] = np.nanmean(v, axis=1)
    df.attrs["units"] = ("mean z-score of the set's genes (expression images); change of that mean "
                         "(difference images)")
    return df


# ----------------------------------------------------------------------------------------------
# one gene in every cell
# ----------------------------------------------------------------------------------------------
def cell_expression(model, adata, gene: str, version: str = "original", scale: str = "log1p",
                    chunk_cells: int = 8192) -> np.ndarray:
    """One gene's value in every cell of ``adata``, in the units the genomaps use.

    Parameters
    ----------
    model : a trained ScMEDAL.
    adata : the cells (AnnData, backed AnnData or path); ``None``: the model's training cells.
    gene : a gene name, matched as by :func:`resolve_genes` (symbols, Ensembl IDs through ``var``).
    version : ``"original"`` (the model's preprocessed input), ``"fe"``, ``"re"``, ``"cf:<batch>"``
        or the comparison's image names (``"Original"``, ``"Counterfactual -> b"``...).
    scale : ``"log1p"`` (log1p-normalised, the recipe's normalisation) or ``"zscore"`` (the per-gene
        z-score of ``compare_cells(scale="zscore")``).
    chunk_cells : cells computed at once (memory stays bounded on large data).

    Returns
    -------
    ndarray
        ``(n_cells,)`` float32, in the order of ``adata``'s cells; equal to that gene's pixel in a
        single-cell comparison's image of the same version and scale.
    """
    if scale not in ("log1p", "zscore"):
        raise DataError(f"Unknown scale {scale!r}; use 'log1p' or 'zscore'.")
    var = getattr(adata, "var", None) if adata is not None and not isinstance(adata, (str, os.PathLike)) else None
    g = resolve_genes([gene], model, var=var, strict=True).found[0]
    j = [str(x) for x in model.genes].index(g)
    v = version_key(version)
    n = model.n_cells(adata)
    out = np.empty(n, dtype=np.float32)
    step = max(1, int(chunk_cells))
    for a in range(0, n, step):
        b = min(n, a + step)
        out[a:b] = np.asarray(model.get_version(v, adata, rows=(a, b)))[:, j]
    if scale == "zscore":
        mean, std = _reference([g], model, adata if not isinstance(adata, (str, os.PathLike)) else None, None)
        out = ((out - mean[0]) / std[0]).astype(np.float32)
    return out
