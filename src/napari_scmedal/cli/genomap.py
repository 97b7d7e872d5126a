"""``scmedal genomap``: genomap arrays, panels and top-gene tables of chosen cells or groups, and an
optional per-pixel test between two groups of batches."""
from __future__ import annotations

from ..pixeltests import PIXEL_TESTS
from ..report import pixel_test_outputs, write_comparison_outputs, write_json
from ._common import (
    _Console,
    _data_options,
    _formats,
    _load_model,
    _read_data,
    _split_list,
)
from ._paths import UsageError, _check_output_dir


def cmd_genomap(args, con: _Console) -> int:
    from .._gene_request import gene_outputs, gene_request
    from ..compare import ensure_layout

    model, model_path = _load_model(args.model, args)
    adata, data_path = _read_data(args.data, layer=args.layer, backed=args.backed)
    out = _check_output_dir(args.out, [data_path, model_path])
    formats = _formats(args.formats)
    if not args.cells and not args.group:
        raise UsageError("Choose cells with --cells NAME_OR_INDEX ... or a group with --group KEY=VALUE[,KEY=VALUE].")
    genes = gene_request(model, adata.var, _split_list(args.highlight), args.gene_set,
                         args.gene_set_name)  # unknown genes fail here, before any work
    for line in genes.notes():
        con.say(line)
    if model.layout is None:
        con.say("the model has no genomap layout yet: computing one on this data (Gromov-Wasserstein); "
                "it is written to layout.json (the model file is not changed)")
        layout = ensure_layout(model, adata=adata, seed=args.seed)
        write_json(out / "layout.json", layout.to_dict())
    comp, cells_for_test = _comparison(args, model, adata)
    con.say(f"{comp.n_rows} row(s) x {len(comp.names)} versions, {comp.shape[0]}x{comp.shape[1]} genomaps")
    gene_files, figure_kw = gene_outputs(comp, genes, out, "genomaps", model=model, adata=adata)
    files = write_comparison_outputs(comp, out, "genomaps", formats, args.dpi, args.gene_labels,
                                     columns=_split_list(args.columns) or None, title=args.title,
                                     figure_kw=figure_kw)
    files["tables"].extend(gene_files)
    summary = {"rows": comp.row_titles, "versions": comp.names, "files": files,
               "expression_limits": comp.expression_limits, "difference_limits": comp.difference_limits,
               "scale": comp.scale, **genes.summary()}
    if args.test:
        summary["pixel_test"] = _pixel_test(args, con, model, adata, cells_for_test, out, formats)
    write_json(out / "genomaps.json", summary)
    con.say(f"wrote {len(files['figures']) + len(files['tables']) + 2} files to {out}")
    return 0


def _comparison(args, model, adata):
    """The comparison of the ``--cells`` (one row each, or their mean) and of each ``--group`` (its mean,
    or a seeded sample of ``--max-cells`` of its cells with ``--per-cell``), stacked; and every chosen cell's position."""
    from ..compare import compare_cells, stack_comparisons
    from ..selection import limit_cells, parse_indices, select_cells

    batches = _split_list(args.batches) or None
    comps = []
    cells_for_test = []
    if args.cells:
        cells = parse_indices(_split_list(args.cells))
        comps.append(compare_cells(model, cells, target_batches=batches, adata=adata,
                                   average=args.average, scale=args.scale))
        cells_for_test.extend(comps[-1].meta["cells"])
    for g in args.group or []:
        idx = select_cells(adata, g)
        if args.per_cell:
            chosen = limit_cells(idx, args.max_cells, seed=args.seed)  # a seeded sample, as in the explorer
            comps.append(compare_cells(model, chosen, target_batches=batches, adata=adata, scale=args.scale))
        else:
            comps.append(compare_cells(model, idx, target_batches=batches, adata=adata, average=True,
                                       scale=args.scale, group_name=g))
        cells_for_test.extend(idx.tolist())
    comp = comps[0] if len(comps) == 1 else stack_comparisons(comps)
    return comp, cells_for_test


def _pixel_test(args, con: _Console, model, adata, cells, out, formats) -> dict:
    """``--test BATCHES_A BATCHES_B``: the per-pixel test on the counterfactuals of the chosen cells;
    returns its entry of genomaps.json."""
    import numpy as np

    from ..compare import compare_cells

    a, b = (_split_list([x]) for x in args.test)
    test_cells = np.unique(np.asarray(cells, dtype=np.int64))
    cf = compare_cells(model, test_cells, target_batches=list(dict.fromkeys(a + b)), adata=adata, scale=args.scale)
    res, tfiles = pixel_test_outputs(cf, a, b, out, "pixel_test", ("A", "B"), formats, args.dpi, args.alpha,
                                     method=args.test_method, dist=args.test_dist)
    con.say(f"{res.description}: {int(res.significant.sum())} significant pixel(s) of {len(res.table)} tested")
    return {"method": res.test, "dist": res.meta.get("dist"), "batches_a": a, "batches_b": b,
            "n_significant": int(res.significant.sum()), "files": tfiles}


def add_parser(sub, common):
    """Add ``genomap`` to the subcommands ``sub`` (``common``: the options every command has)."""
    gm = sub.add_parser("genomap", parents=[common], help="genomap arrays, panels and top-gene tables of chosen cells",
                        description="Genomap images of chosen cells or groups in every version (original, FE, RE, "
                                    "counterfactuals, differences): arrays (.npz), figure panels, top-gene CSVs and "
                                    "optionally a per-pixel test (Mann-Whitney U or a mixed model) between two groups of batches.")
    gm.add_argument("model", metavar="MODEL")
    gm.add_argument("data", metavar="DATA.h5ad")
    gm.add_argument("--cells", nargs="+", metavar="CELL", help="obs names or integer positions (one row each)")
    gm.add_argument("--group", action="append", metavar="KEY=VALUE[,KEY=VALUE]",
                    help="a group of cells, e.g. cell_line=A549,batch=CELseq2_3cl (repeatable; averaged into one "
                         "row each unless --per-cell)")
    gm.add_argument("--average", action="store_true", help="average the --cells into one row")
    gm.add_argument("--per-cell", action="store_true", help="show a group's cells as rows instead of their mean")
    gm.add_argument("--max-cells", type=int, default=8, help="rows per group with --per-cell (default 8)")
    gm.add_argument("--batches", nargs="+", metavar="BATCH", help="target batches (default: all)")
    gm.add_argument("--scale", choices=["log1p", "zscore"], default="log1p",
                    help="pixel values: log1p expression or per-gene z-scores (default log1p)")
    gm.add_argument("--columns", nargs="+", metavar="VERSION", help="versions to draw (default: all)")
    gm.add_argument("--gene-labels", type=int, default=10, help="label this many top genes (0: none; default 10)")
    gm.add_argument("--highlight", action="append", metavar="GENE[,GENE...]",
                    help="mark these genes on every tile and write their value in every version to "
                         "genomaps_gene_values.csv (symbols or Ensembl IDs; repeatable)")
    gm.add_argument("--gene-set", metavar="FILE[:SETNAME]",
                    help="outline a gene set's pixels on every tile and write its mean z-score per version (and its "
                         "change in each counterfactual) to genomaps_set_scores.csv; FILE: .txt (genes), .csv/.tsv "
                         "(a gene column) or .gmt (choose the set with :SETNAME or --gene-set-name)")
    gm.add_argument("--gene-set-name", metavar="SETNAME", help="the set to use from a --gene-set file holding several")
    gm.add_argument("--title", default=None, help="figure title")
    gm.add_argument("--formats", default="png", help="figure formats, comma-separated: png,svg,pdf,tif (default png)")
    gm.add_argument("--dpi", type=int, default=200, help="figure resolution (default 200)")
    gm.add_argument("--test", nargs=2, metavar=("BATCHES_A", "BATCHES_B"),
                    help="per-pixel test (--test-method) between counterfactuals to two groups of batches "
                         "(comma-separated), on the selected cells")
    gm.add_argument("--test-method", choices=list(PIXEL_TESTS), default="mannwhitney",
                    help="--test's model: mannwhitney (every cell x batch genomap independent; default) or "
                         "mixedlm (value ~ group + (1 | batch): each batch in BATCHES_A is group A, in BATCHES_B "
                         "group B; needs 2+ batches per group)")
    gm.add_argument("--test-dist", choices=["normal", "t"], default="normal",
                    help="mixedlm p-values: normal (statsmodels' z-test; default) or t with n_batches - 2 degrees "
                         "of freedom (better calibrated with few batches)")
    gm.add_argument("--alpha", type=float, default=0.05, help="FDR level for --test (default 0.05)")
    _data_options(gm, "open the data backed (files larger than memory): only the chosen cells are read")
    gm.add_argument("--out", required=True, metavar="DIR", help="output folder")
    gm.set_defaults(func=cmd_genomap)
    return gm
