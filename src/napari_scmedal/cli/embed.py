"""``scmedal embed``: write the latents (and optionally reconstructions and counterfactuals) to a new .h5ad."""
from __future__ import annotations

from .._utils import atomic_output
from .._utils import json_safe as _json_safe
from ..report import write_h5ad as _write_h5ad
from ..versions import cf_key, check_target_batches
from ._common import _Console, _data_options, _load_model, _read_data, _split_list
from ._paths import UsageError, _check_output_file, _existing_file


def cmd_embed(args, con: _Console) -> int:
    import numpy as np

    model, model_path = _load_model(args.model, args)
    if args.backed:
        return _embed_backed(args, con, model, model_path)
    adata, data_path = _read_data(args.data, layer=args.layer)
    out = _check_output_file(args.out, [data_path, model_path], "output file")
    if out.suffix != ".h5ad":
        raise UsageError(f"The output {str(out)!r} must end in .h5ad.")
    cf_batches = None
    if args.counterfactuals is not None:
        cf_batches = check_target_batches(model.batches, _split_list(args.counterfactuals) or None,
                                          what="--counterfactuals batch(es)")
    model.write_to_adata(adata)
    con.say(f"latents written for {adata.n_obs} cells: "
            + ", ".join(k for k in adata.obsm if "scmedal" in k.lower()))
    if args.reconstructions or cf_batches:
        # layers must have the model's genes: the output keeps only those genes
        genes = list(model.genes)
        missing = [g for g in genes if g not in adata.var_names]
        if missing:
            raise UsageError(f"{len(missing)} model genes are not in {data_path.name} (e.g. {missing[:3]}); "
                             "reconstructions cannot be stored as layers of this file.")
        # computed from the FULL data (every normalisation gene makes the library size), exactly as
        # model.get_reconstruction / get_counterfactual_expression(adata=...) give them; then the file keeps
        # the model's genes so that the layers align with var
        con.say(f"computing {'reconstructions' if args.reconstructions else ''}"
                f"{' and ' if args.reconstructions and cf_batches else ''}"
                f"{f'counterfactuals into {len(cf_batches)} batch(es)' if cf_batches else ''} "
                f"for {adata.n_obs} cells (one pass of the model's versions)")
        versions = model.predict_versions(adata, cf_batches or [])
        layers = {}
        if args.reconstructions:
            for kind in ("fe", "re"):
                layers[f"scmedal_{kind}_reconstruction"] = np.asarray(versions[kind], dtype=np.float32)
        for b in cf_batches or []:
            layers[f"scmedal_counterfactual_{b}"] = np.asarray(versions[cf_key(b)], dtype=np.float32)
        del versions
        adata = adata[:, genes].copy()
        adata.layers.update(layers)
        adata.uns["scmedal_layers"] = {
            "units": "log1p-normalised expression (target sum of the model's recipe)",
            "note": "the file keeps only the model's genes so that layers align with var",
        }
        con.say(f"added layers: {[k for k in adata.layers if k.startswith('scmedal_')]}")
    _write_h5ad(adata, out)
    con.say(f"wrote {out}")
    return 0


def _embed_backed(args, con: _Console, model, model_path) -> int:
    """``embed --backed``: latents computed block by block from the file; the output is a copy of the input
    file (copied on disk, never loaded) with the latents added to obsm and the summary to uns."""
    import shutil

    import anndata as ad
    import h5py

    data_path = _existing_file(args.data, "data file")
    out = _check_output_file(args.out, [data_path, model_path], "output file")
    if out.suffix != ".h5ad":
        raise UsageError(f"The output {str(out)!r} must end in .h5ad.")
    if args.reconstructions or args.counterfactuals is not None:
        raise UsageError("--backed writes latents only: reconstructions and counterfactuals are dense cells x genes "
                         "layers, too large for the files --backed is for. Use 'scmedal genomap' or the Python API "
                         "(model.get_version(..., rows=(start, stop))) on the cells you need.")
    if args.layer is not None and args.layer != model.recipe.layer:
        raise UsageError(f"--layer {args.layer!r} differs from the layer the model was trained on "
                         f"({model.recipe.layer!r}); with --backed the model's own layer is read.")
    latents = {k: model.get_latent_representation(k, adata=data_path) for k in model.trained_kinds}
    con.say(f"latents computed for {next(iter(latents.values())).shape[0]} cells from the file, block by block")
    with atomic_output(out) as tmp:
        shutil.copyfile(data_path, tmp)
        with h5py.File(tmp, "r+") as f:
            obsm = f["obsm"] if "obsm" in f else f.create_group("obsm")
            for k, z in latents.items():
                key = f"X_scmedal_{k}"
                if key in obsm:
                    del obsm[key]
                ad.io.write_elem(obsm, key, z)
            uns = f["uns"] if "uns" in f else f.create_group("uns")
            if "scmedal" in uns:
                del uns["scmedal"]
            summary = {k: v for k, v in _json_safe(model.summary()).items() if v is not None}
            summary["config"] = {k: v for k, v in summary["config"].items() if v is not None}
            ad.io.write_elem(uns, "scmedal", summary)
    con.say(f"wrote {out} (a copy of {data_path.name} with obsm: {', '.join('X_scmedal_' + k for k in latents)})")
    return 0




def add_parser(sub, common):
    """Add ``embed`` to the subcommands ``sub`` (``common``: the options every command has)."""
    e = sub.add_parser("embed", parents=[common], help="write latents (and optionally reconstructions, "
                       "counterfactuals) to a new .h5ad", description="Write the FE/FEC/RE latents of every cell "
                       "to a new .h5ad (obsm); optionally reconstructions and counterfactuals as layers.")
    e.add_argument("model", metavar="MODEL", help="model file written by 'scmedal train'")
    e.add_argument("data", metavar="DATA.h5ad", help="cells to embed (genes and batches must fit the model)")
    e.add_argument("--out", required=True, metavar="OUT.h5ad", help="new output file (never an input)")
    e.add_argument("--reconstructions", action="store_true", help="add FE and RE reconstructions as layers")
    e.add_argument("--counterfactuals", nargs="*", default=None, metavar="BATCH",
                   help="add counterfactual layers for these batches (no name: every batch)")
    _data_options(e, "for files larger than memory: latents computed block by block, written into a copy of "
                     "the file (latents only)")
    e.set_defaults(func=cmd_embed)
    return e
