"""Gene lists in, for :mod:`napari_scmedal.genesets` (which re-exports them): pasted text and gene-set
files (.txt, .csv/.tsv, .gmt). Imports nothing else of the package but its errors.
Pure core: no Qt, no napari."""
from __future__ import annotations

import difflib
import os
import re
from pathlib import Path

import pandas as pd

from .errors import DataError

__all__ = ["load_gene_set", "parse_gene_list", "read_gene_sets"]

GENE_HEADERS = ("gene", "genes", "symbol", "gene_symbol", "gene symbol", "gene_name", "gene name", "genesymbol",
                "ensembl", "ensembl_id", "gene_id", "gene id", "id", "name", "feature")
SET_HEADERS = ("set", "gene_set", "geneset", "gene set", "set_name", "term", "pathway")


# ----------------------------------------------------------------------------------------------
def parse_gene_list(text) -> list[str]:
    """Gene names from pasted text: separated by commas, semicolons, spaces, tabs or newlines.
    Quotes are stripped, blanks and duplicates dropped (first occurrence kept).  An iterable of
    strings is parsed item by item."""
    if text is None:
        return []
    items = [text] if isinstance(text, str) else list(text)
    out: list[str] = []
    for item in items:
        for tok in re.split(r"[\s,;]+", str(item)):
            tok = tok.strip().strip("\"'")
            if tok:
                out.append(tok)
    return list(dict.fromkeys(out))


def _is_number(s) -> bool:
    try:
        float(str(s))
        return True
    except ValueError:
        return False


def _read_table(path: Path, sep: str) -> dict[str, list[str]]:
    try:
        df = pd.read_csv(path, sep=sep, header=None, dtype=str, skip_blank_lines=True, comment="#",
                         keep_default_na=False, engine="python")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"Cannot read the gene table {path.name}: {exc}. Give a CSV/TSV with one gene per row "
                        "(a column named 'gene' or the first column).") from None
    first = [str(x).strip().lower() for x in df.iloc[0]] if len(df) else []
    known = [h for h in GENE_HEADERS if h in first]
    numeric_below = len(df) > 1 and any(
        not _is_number(df.iat[0, j]) and all(_is_number(v) for v in df.iloc[1:, j] if str(v).strip())
        for j in range(df.shape[1]))
    header = bool(known) or any(h in first for h in SET_HEADERS) or numeric_below
    body = df.iloc[1:] if header else df
    gene_col = first.index(known[0]) if known else 0
    set_col = next((first.index(h) for h in SET_HEADERS if header and h in first), None)

    def clean(values):
        return [v for v in (str(x).strip() for x in values) if v]

    if set_col is None:
        return {path.stem: list(dict.fromkeys(clean(body.iloc[:, gene_col])))}
    out: dict[str, list[str]] = {}
    for name, g in body.groupby(body.columns[set_col], sort=False):
        out[str(name).strip() or path.stem] = list(dict.fromkeys(clean(g.iloc[:, gene_col])))
    return out


def _read_gmt(text: str, where: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.rstrip("\r\n").split("\t") if "\t" in line else line.split()
        if len(fields) < 3:
            raise DataError(f"{where}, line {n}: a GMT line is NAME<tab>DESCRIPTION<tab>GENE<tab>GENE...; this one "
                            f"has {len(fields)} field(s).")
        name, k = fields[0].strip(), 2
        while name in out:
            name, k = f"{fields[0].strip()} ({k})", k + 1
        out[name] = list(dict.fromkeys(g.strip() for g in fields[2:] if g.strip()))
    return out


def read_gene_sets(path) -> dict[str, list[str]]:
    """Gene sets in a file: ``{set name: [gene, ...]}``.

    * ``.gmt``: one set a line, ``NAME<tab>DESCRIPTION<tab>GENE<tab>...`` (MSigDB format);
    * ``.csv`` / ``.tsv``: the column named gene/genes/symbol/... (else the first column); a header
      row is detected (a known column name, or text above numbers); a column named set/term/pathway
      splits the rows into several sets;
    * anything else (``.txt``, ``.grp``...): gene names separated by newlines, spaces or commas,
      ``#`` comment lines skipped.  One-set files are named after the file (its stem).
    """
    p = Path(os.fspath(path)).expanduser()
    if not p.is_file():
        raise DataError(f"The gene-set file {str(p)!r} does not exist (or is a folder). Check the path.")
    ext = p.suffix.lower()
    if ext in (".csv", ".tsv"):
        sets = _read_table(p, "," if ext == ".csv" else "\t")
    else:
        text = p.read_text(encoding="utf-8-sig", errors="replace")
        if ext == ".gmt":
            sets = _read_gmt(text, p.name)
        else:
            sets = {p.stem: parse_gene_list(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))}
    sets = {k: v for k, v in sets.items() if v}
    if not sets:
        raise DataError(f"No gene names found in {p.name}. Give one gene per line (text), a gene column (CSV/TSV) "
                        "or NAME<tab>DESCRIPTION<tab>GENES lines (GMT).")
    return sets


def load_gene_set(path, name: str | None = None) -> tuple[str, list[str]]:
    """One gene set from a file: ``(name, genes)``.

    ``path`` may end in ``:SETNAME`` (``"hallmark.gmt:HALLMARK_HYPOXIA"``).  A file with several
    sets needs ``name`` (matched ignoring case); the error lists the sets it holds.
    """
    spec = os.fspath(path)
    if name is None and not os.path.exists(spec) and ":" in spec:
        head, tail = spec.rsplit(":", 1)
        if os.path.exists(head):
            spec, name = head, tail
    sets = read_gene_sets(spec)
    names = list(sets)
    shown = ", ".join(names[:15]) + (f" ... ({len(names)} sets)" if len(names) > 15 else "")
    if name is None or not str(name).strip():
        if len(sets) == 1:
            return names[0], sets[names[0]]
        raise DataError(f"{os.path.basename(spec)} holds {len(sets)} gene sets; choose one: {shown}. "
                        "(Python: load_gene_set(path, name=...); command line: --gene-set FILE:NAME.)")
    lower = {k.lower(): k for k in names}
    key = lower.get(str(name).strip().lower())
    if key is None:
        close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise DataError(f"No gene set {name!r} in {os.path.basename(spec)}.{hint} Its sets: {shown}.")
    return key, sets[key]
