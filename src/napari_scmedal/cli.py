"""The ``scmedal`` command: train, embed, genomap, evaluate, holdout and the end-to-end demo.

Every subcommand is a thin layer over the core (:class:`~napari_scmedal.ScMEDAL`,
:mod:`~napari_scmedal.compare`, :mod:`~napari_scmedal.analysis`, :mod:`~napari_scmedal.figures`,
:mod:`~napari_scmedal.metrics`): what the command line does, Python and the napari widgets can do
too.  Bad input ends with the core's message (what is wrong and how to fix it) on stderr and a
non-zero exit code, without a traceback.  Outputs are written atomically (temporary file, then
``os.replace``) and never over an input file.  ``python -m napari_scmedal`` is the same command.

Exit codes: 0 success, 1 a napari-scmedal error (bad input, failed training...), 2 bad command
line (argparse), 130 interrupted.
"""
from __future__ import annotations

import argparse
import html
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from ._utils import atomic_output, check_writable_folder
from ._utils import json_safe as _json_safe
from .errors import ScMEDALError

__all__ = ["main", "build_parser", "UsageError"]

PROG = "scmedal"
FORMATS = ("png", "svg", "pdf", "tif", "tiff")


class UsageError(ScMEDALError, ValueError):
    """A command-line request that cannot be carried out as given (e.g. output over an input)."""


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------
class _Console:
    def __init__(self, quiet: bool = False):
        self.quiet = quiet

    def say(self, msg: str) -> None:
        if not self.quiet:
            print(f"[{PROG}] {msg}", file=sys.stderr, flush=True)


def _existing_file(path, what: str) -> Path:
    p = Path(os.fspath(path)).expanduser()
    if not p.exists():
        raise UsageError(f"The {what} {str(p)!r} does not exist. Check the path.")
    if p.is_dir():
        raise UsageError(f"The {what} {str(p)!r} is a folder; give the path of the file itself.")
    return p


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _check_output_file(out, inputs: Sequence[Path], what: str) -> Path:
    o = Path(os.fspath(out)).expanduser()
    for i in inputs:
        if o.resolve() == Path(i).resolve() or _same_file(o, Path(i)):
            raise UsageError(
                f"The {what} {str(o)!r} is one of the inputs; inputs are never overwritten. "
                "Choose another output path."
            )
    if o.exists() and o.is_dir():
        raise UsageError(f"The {what} {str(o)!r} is a folder; give a file name.")
    check_writable_folder(o.parent, UsageError, f"folder of the {what}")  # fail now, not after training
    return o


def _check_output_dir(out, inputs: Sequence[Path]) -> Path:
    o = Path(os.fspath(out)).expanduser()
    if o.exists() and not o.is_dir():
        raise UsageError(f"The output folder {str(o)!r} exists and is a file. Choose a folder path.")
    for i in inputs:
        ip = Path(i).resolve()
        if o.resolve() == ip:
            raise UsageError(f"The output folder {str(o)!r} is an input file. Choose another folder.")
    return check_writable_folder(o, UsageError, "output folder")  # fail now, not after hours of training


def _write_text(path: Path, text: str) -> Path:
    with atomic_output(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return path


def _write_json(path: Path, obj: Any) -> Path:
    return _write_text(path, json.dumps(_json_safe(obj), indent=2) + "\n")


def _write_h5ad(adata, path: Path) -> Path:
    if "scmedal" in adata.uns:  # plain JSON types only, so h5py can store it
        adata.uns["scmedal"] = _json_safe(adata.uns["scmedal"], drop_none=True)
    with atomic_output(path) as tmp:
        adata.write_h5ad(tmp)
    return path


def _split_list(values) -> list[str]:
    """``["a,b", "c"]`` -> ``["a", "b", "c"]``."""
    out: list[str] = []
    for v in values or []:
        out.extend(x.strip() for x in str(v).split(",") if x.strip())
    return out


def _setup_runtime(args) -> None:
    import numpy as np

    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads must be at least 1 (got {args.threads}).")
        import torch

        torch.set_num_threads(int(args.threads))
    np.random.seed(args.seed % (2**32))
    if args.device is not None and args.device != "auto":
        import torch

        try:
            torch.device(args.device)
        except (RuntimeError, ValueError):
            raise UsageError(f"Unknown --device {args.device!r}; use cpu, cuda, cuda:N, mps or auto.") from None


class _TrainProgress:
    """tqdm bars per network (FE, FEC, RE) fed by ScMEDAL.train's progress callback."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bars: dict[str, Any] = {}

    def __call__(self, info: dict) -> None:
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        name = str(info.get("model", "?"))
        bar = self.bars.get(name)
        if bar is None:
            for b in self.bars.values():
                b.close()
            bar = self.bars[name] = tqdm(total=int(info.get("max_epochs") or 0) or None,
                                         desc=f"train {name.upper()}", unit="epoch",
                                         file=sys.stderr, leave=True, dynamic_ncols=True)
        val = info.get("val") or {}
        tr = info.get("train") or {}
        loss = val.get("total", tr.get("total"))
        if loss is not None:
            bar.set_postfix_str(f"{'val' if 'total' in val else 'train'} loss {float(loss):.4g}", refresh=False)
        step = int(info.get("epoch", bar.n)) - bar.n
        if step > 0:
            bar.update(step)

    def close(self) -> None:
        for b in self.bars.values():
            b.close()
        self.bars.clear()


def _warn(msg: str) -> None:
    """A warning the user must see: on stderr even with --quiet (like errors); the exit code is unchanged."""
    print(f"[{PROG}] WARNING: {msg}", file=sys.stderr, flush=True)


def report_training(model, con: _Console) -> int:
    """After ``train()``: the settings it used (value and reason, one line each), how each network stopped
    and the training health (docs/model.md "Training health"). Returns the number of health problems."""
    from ._training_report import settings_lines, stop_lines

    d = model.derived or {}
    if d:
        con.say(f"settings ({d.get('preset')} preset, {d.get('n_train')} training cells):")
        for line in settings_lines(d):
            con.say(f"  {line}")
    for line in stop_lines(model.history):
        con.say(line)
    return report_health(model.health, con)


def report_health(health, con: _Console, full: bool = True) -> int:
    """``model.health``: one line per network (``full``) and every problem as a WARNING line, printed even
    with --quiet. Returns the number of problems."""
    from ._training_report import health_lines, health_problems

    if full and health:
        con.say("training health:")
        for line in health_lines(health):
            con.say(f"  {line}")
    problems = health_problems(health)
    for p in problems:
        _warn(f"training health: {p}")
    return len(problems)


def _load_model(path, args, health: bool = True):
    """The model file (``health``: print WARNING lines for the training-health problems stored in it)."""
    from .model import ScMEDAL

    p = _existing_file(path, "model file")
    model = ScMEDAL.load(p, **_device_kw(ScMEDAL.load, args))
    model.size_factor_key = getattr(args, "size_factor_key", None)
    if health and report_health(getattr(model, "health", None), _Console(quiet=True), full=False):
        _warn(f"{p.name} was saved with the training-health problems above; its outputs may be unreliable "
              "('scmedal evaluate' shows its health).")
    return model, p


def _device_kw(fn, args) -> dict:
    import inspect

    kw = {}
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return kw
    if "device" in params and args.device is not None:
        kw["device"] = args.device
    if "threads" in params and args.threads is not None:
        kw["threads"] = args.threads
    return kw


def _read_data(path, layer=None, backed: bool = False):
    """The data file in memory, or opened backed (read-only; the matrix stays on disk and is read in
    blocks by the model) with ``backed=True``."""
    from .data import read_h5ad

    p = _existing_file(path, "data file")
    if not backed:
        return read_h5ad(p, layer=layer), p
    if layer is not None:
        raise UsageError("--layer cannot be combined with --backed: the model reads the layer it was trained on.")
    import anndata as ad

    try:
        return ad.read_h5ad(p, backed="r"), p
    except Exception as exc:
        raise UsageError(f"Could not open {p} backed ({type(exc).__name__}: {exc}); check that it is an .h5ad file "
                         "written by anndata.") from None


# ----------------------------------------------------------------------------------------------
# train
# ----------------------------------------------------------------------------------------------
def cmd_train(args, con: _Console) -> int:
    """``scmedal train``; also the per-process entry point under ``torchrun -m napari_scmedal train``."""
    from .distributed import init_from_env, launched_by_torchrun, shutdown

    if not launched_by_torchrun():
        return _train(args, con, None)
    comm = init_from_env(args.device)
    try:
        if not comm.is_main:  # one voice: rank 0 reports, the others stay quiet unless they fail
            con = _Console(quiet=True)
        return _train(args, con, comm)
    finally:
        shutdown()


def _train(args, con: _Console, comm) -> int:
    from .model import ScMEDAL

    main = comm is None or comm.is_main
    if args.chunk_cells is not None and args.chunk_cells < 1:
        raise UsageError(f"--chunk-cells must be at least 1 (got {args.chunk_cells}).")
    if args.steps_per_epoch is not None and args.steps_per_epoch < 1:
        raise UsageError(f"--steps-per-epoch must be at least 1 (got {args.steps_per_epoch}).")
    if args.max_time is not None and not args.max_time > 0:
        raise UsageError(f"--max-time must be a positive number of seconds (got {args.max_time:g}).")
    kw = dict(batch_key=args.batch_key, label_key=args.label_key, seed=args.seed, preset=args.preset,
              input_kind=args.input_kind)
    if args.genes is not None:
        kw["n_genes"] = args.genes
    if args.device is not None:
        kw["device"] = args.device
    if args.threads is not None:
        kw["threads"] = args.threads
    if args.backed:
        data_path = _existing_file(args.data, "data file")
        out = _check_output_file(args.out, [data_path], "model file")
        con.say(f"training out of core from {data_path.name} (read in blocks of "
                f"{args.chunk_cells or 'the default number of'} cells; the file is never loaded whole)")
        model = ScMEDAL(data_path, layer=args.layer, backed=True, chunk_cells=args.chunk_cells, **kw)
        info = model._plan.info
        con.say(f"streamed {info['cells_in_file']} cells x {info['genes_in_file']} genes in "
                f"{info['pass1_s'] + info['pass2_s']:.1f} s ({info['cells_removed']} cells and "
                f"{info['genes_removed']} genes filtered out)")
    else:
        adata, data_path = _read_data(args.data, layer=args.layer)
        out = _check_output_file(args.out, [data_path], "model file")
        con.say(f"read {data_path.name}: {adata.n_obs} cells x {adata.n_vars} genes")
        model = ScMEDAL(adata, **kw)
    where = "" if comm is None else (f" on {comm.world} processes ({'NCCL' if comm.device.type == 'cuda' else 'gloo'}, "
                                     f"global minibatch split across them)")
    con.say(f"training scMEDAL ({args.preset} preset) on {len(model.genes)} genes, "
            f"{len(model.batches)} batches" + (f", labels from {args.label_key!r}" if args.label_key else "") + where)
    bars = _TrainProgress(enabled=not args.quiet and main)
    t0 = time.perf_counter()
    try:
        model.train(max_epochs=args.epochs, patience=args.patience, batch_size=args.batch_size,
                    health_warnings=False,  # printed below, from model.health (report_training)
                     progress=bars, precision=args.precision, max_steps_per_epoch=args.steps_per_epoch,
                     max_time=args.max_time)
    finally:
        bars.close()
    con.say(f"trained in {time.perf_counter() - t0:.1f} s")
    if main:
        n_problems = report_training(model, con)
        if args.layout:
            from .compare import ensure_layout

            con.say("computing the genomap layout (Gromov-Wasserstein) to store with the model")
            ensure_layout(model, seed=args.seed)
        model.save(out)  # atomic: a temporary file in the same folder, then renamed
        con.say(f"wrote {out}")
        if n_problems:
            _warn(f"the model was saved, but its training health check found {n_problems} problem(s) (above): "
                  "check them before trusting its latents and counterfactuals.")
    if comm is not None:
        comm.barrier()  # the other ranks wait until rank 0 has written the model
    return 0


# ----------------------------------------------------------------------------------------------
# embed
# ----------------------------------------------------------------------------------------------
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
        cf_batches = _split_list(args.counterfactuals) or list(model.batches)
        unknown = [b for b in cf_batches if b not in list(model.batches)]
        if unknown:
            raise UsageError(f"Unknown batch(es) {unknown} for --counterfactuals; the model knows "
                             f"{list(model.batches)}.")
    model.write_to_adata(adata)
    con.say(f"latents written for {adata.n_obs} cells: "
            + ", ".join(k for k in adata.obsm.keys() if "scmedal" in k.lower()))
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
        layers = {}
        if args.reconstructions:
            for kind in ("fe", "re"):
                layers[f"scmedal_{kind}_reconstruction"] = np.asarray(
                    model.get_reconstruction(kind, adata=adata), dtype=np.float32)
        from tqdm.auto import tqdm

        for b in tqdm(cf_batches or [], desc="counterfactuals", unit="batch", file=sys.stderr,
                      disable=args.quiet):
            layers[f"scmedal_counterfactual_{b}"] = np.asarray(
                model.get_counterfactual_expression(b, adata=adata), dtype=np.float32)
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


# ----------------------------------------------------------------------------------------------
# genomap
# ----------------------------------------------------------------------------------------------
def _parse_cells(values) -> list:
    out: list = []
    for v in _split_list(values):
        out.append(int(v) if v.lstrip("-").isdigit() else v)
    if out and all(isinstance(v, int) for v in out):
        return out
    return [str(v) for v in out]


def write_comparison_outputs(comp, out: Path, stem: str, formats: Sequence[str], dpi: int,
                             gene_labels: int, columns=None, title=None, figure_kw=None) -> dict[str, list[str]]:
    """Arrays (.npz), panel figure(s), per-row and overall top-gene CSVs of one comparison
    (``figure_kw``: more arguments of comparison_figure, e.g. highlighted genes and a gene set)."""
    from .analysis import write_csv
    from .figures import comparison_figure, save_figure

    files: dict[str, list[str]] = {"arrays": [], "figures": [], "tables": []}
    files["arrays"].append(comp.save_npz(out / f"{stem}.npz"))
    fig = comparison_figure(comp, columns=columns, gene_labels=gene_labels, title=title, **(figure_kw or {}))
    for fmt in formats:
        files["figures"].append(save_figure(fig, out / f"{stem}.{fmt}", dpi=dpi))
    top = comp.top_genes.copy()
    if len(top):
        top.insert(1, "title", [comp.row_titles[int(r)] for r in top["row"]])
    files["tables"].append(write_csv(top, out / f"{stem}_top_genes.csv"))
    files["tables"].append(write_csv(comp.top_genes_overall, out / f"{stem}_top_genes_overall.csv"))
    return files


def _pixel_test_outputs(comp, batches_a, batches_b, out: Path, stem: str, names, formats, dpi, alpha,
                        method="mannwhitney", dist="normal"):
    from .figures import pixel_test_figure, save_figure
    from .lmm import counterfactual_pixel_test

    res = counterfactual_pixel_test(comp, batches_a, batches_b, method=method, alpha=alpha, names=names, dist=dist)
    files = [res.to_csv(out / f"{stem}.csv"), res.to_csv(out / f"{stem}_significant.csv", significant_only=True)]
    import numpy as np

    overlay = out / f"{stem}_overlay.npz"
    with atomic_output(overlay) as tmp:
        np.savez_compressed(tmp, significant=res.significant, q=res.q, p=res.p, diff=res.diff)
    files.append(str(overlay))
    fig = pixel_test_figure(res, title=f"{res.description}, counterfactuals to {names[1]} vs {names[0]}: "
                                       f"{int(res.significant.sum())} significant pixel(s), BH q < {alpha:g}")
    for fmt in formats:
        files.append(save_figure(fig, out / f"{stem}.{fmt}", dpi=dpi))
    return res, files


def _formats(text) -> list[str]:
    fmts = [f.lower().lstrip(".") for f in _split_list([text])]
    bad = [f for f in fmts if f not in FORMATS]
    if bad or not fmts:
        raise UsageError(f"Unknown figure format(s) {bad or text!r}; use any of {', '.join(FORMATS)}.")
    return fmts


def cmd_genomap(args, con: _Console) -> int:
    from .compare import compare_cells, ensure_layout, select_cells, stack_comparisons

    model, model_path = _load_model(args.model, args)
    adata, data_path = _read_data(args.data, layer=args.layer, backed=args.backed)
    out = _check_output_dir(args.out, [data_path, model_path])
    formats = _formats(args.formats)
    if not args.cells and not args.group:
        raise UsageError("Choose cells with --cells NAME_OR_INDEX ... or a group with --group KEY=VALUE[,KEY=VALUE].")
    batches = _split_list(args.batches) or None
    from .genesets import gene_outputs, gene_request

    genes = gene_request(model, getattr(adata, "var", None), _split_list(args.highlight), args.gene_set,
                         args.gene_set_name)  # unknown genes fail here, before any work
    for line in genes.notes():
        con.say(line)
    if getattr(model, "layout", None) is None:
        con.say("the model has no genomap layout yet: computing one on this data (Gromov-Wasserstein); "
                "it is written to layout.json (the model file is not changed)")
        layout = ensure_layout(model, adata=adata, seed=args.seed)
        _write_json(out / "layout.json", layout.to_dict())
    comps = []
    cells_for_test = []
    if args.cells:
        cells = _parse_cells(args.cells)
        comps.append(compare_cells(model, cells, target_batches=batches, adata=adata,
                                   average=args.average, scale=args.scale))
        cells_for_test.extend(comps[-1].meta["cells"])
    for g in args.group or []:
        idx = select_cells(adata, g)
        if args.per_cell:
            chosen = idx[: args.max_cells]
            comps.append(compare_cells(model, chosen, target_batches=batches, adata=adata, scale=args.scale))
        else:
            comps.append(compare_cells(model, idx, target_batches=batches, adata=adata, average=True,
                                       scale=args.scale, group_name=g))
        cells_for_test.extend(idx.tolist())
    comp = comps[0] if len(comps) == 1 else stack_comparisons(comps)
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
        a, b = (_split_list([x]) for x in args.test)
        import numpy as np

        test_cells = np.unique(np.asarray(cells_for_test, dtype=np.int64))
        cf = compare_cells(model, test_cells, target_batches=list(dict.fromkeys(a + b)), adata=adata,
                           scale=args.scale)
        res, tfiles = _pixel_test_outputs(cf, a, b, out, "pixel_test", ("A", "B"), formats, args.dpi, args.alpha,
                                          method=args.test_method, dist=args.test_dist)
        con.say(f"{res.description}: {int(res.significant.sum())} significant pixel(s) of {len(res.table)} tested")
        summary["pixel_test"] = {"method": res.test, "dist": res.meta.get("dist"), "batches_a": a, "batches_b": b,
                                 "n_significant": int(res.significant.sum()),
                                 "files": tfiles}
    _write_json(out / "genomaps.json", summary)
    con.say(f"wrote {len(files['figures']) + len(files['tables']) + 2} files to {out}")
    return 0


# ----------------------------------------------------------------------------------------------
# evaluate
# ----------------------------------------------------------------------------------------------
def _write_metrics(table: dict, out: Path) -> list[str]:
    import pandas as pd

    from .analysis import write_csv
    from .metrics import metrics_rows

    cols = ["split", "latent", "grouping", "metric", "value", "better", "ci_low", "ci_high", "chance", "n_folds"]
    return [str(_write_json(out / "metrics.json", table)),
            write_csv(pd.DataFrame(metrics_rows(table), columns=cols), out / "metrics.csv")]


def cmd_evaluate(args, con: _Console) -> int:
    from .metrics import LATENT_NAMES, check_baselines, evaluate_model

    args.baselines = check_baselines(args.baselines)  # unknown names, missing harmonypy: before loading anything
    if args.folds < 1:
        raise UsageError(f"--folds {args.folds}: give 2 or more folds, or 1 for a single train/test split.")

    model, model_path = _load_model(args.model, args, health=False)  # the full health report follows below
    adata, data_path = _read_data(args.data, layer=args.layer, backed=args.backed)
    out = _check_output_dir(args.out, [data_path, model_path])
    con.say(f"evaluating on the {args.split} split (METHOD.md section 4)")
    table = evaluate_model(model, args.split, subsample=args.subsample, seed=args.seed, target=args.target,
                           held_out_batches=args.held_out_batches, adata=adata, baselines=args.baselines,
                           n_folds=None if args.folds == 1 else args.folds)
    table["health"] = model.health  # the training health stored in the model file
    files = _write_metrics(table, out)
    for kind, s in table["latents"].items():
        b = s["batch"]
        con.say(f"{LATENT_NAMES.get(kind, kind.upper()):7s} batch ASW {b['asw']:+.3f}, iLISI {b['ilisi']:.3f}"
                + (f"; label ASW {s['label']['asw']:+.3f}, cLISI {s['label']['clisi']:.3f}, "
                   f"NMI {s['label']['nmi']:.3f}" if s.get("label") else ""))
    cls = table.get("classification")
    if cls:
        ci = cls.get("ci") or {}
        con.say(f"classify {cls['target']} ({cls['protocol']}, {cls['n_folds']} fold(s)): "
                + ", ".join(f"{k.upper()} {cls[k]:.3f}" + (f" [{ci[k][0]:.3f}, {ci[k][1]:.3f}]" if k in ci else "")
                            for k in ("fe", "re", "fe+re")) + f"; chance {cls['chance']:.3f}")
    report_health(model.health, con)
    con.say(f"wrote {', '.join(files)}")
    return 0


# ----------------------------------------------------------------------------------------------
# holdout
# ----------------------------------------------------------------------------------------------
def _parse_pairs(values, labels, batches) -> list[tuple[str, str]] | None:
    """``["H1975:Dropseq_3cl,A549:CELseq2_5cl_p1"]`` -> pairs; the split point is the ':' that leaves a
    known label and a known batch (names may contain ':')."""
    items = _split_list(values)
    if not items:
        return None
    pairs = []
    for item in items:
        cands = [(item[:i], item[i + 1:]) for i, ch in enumerate(item) if ch == ":"]
        ok = [c for c in cands if c[0] in labels and c[1] in batches]
        if not ok:
            raise UsageError(f"--pairs entry {item!r} is not LABEL:BATCH with a known label and batch "
                             f"(labels: {sorted(labels)[:8]}, batches: {sorted(batches)[:8]}).")
        pairs.append(ok[0])
    return pairs


def holdout_summary(df) -> "Any":
    """Mean score per method over the pairs (and the number of pairs)."""
    cols = [c for c in ("r2_all", "r2_top100", "shift_corr", "cell_rmse") if df[c].notna().any()]
    out = df.groupby("method", sort=False)[cols].mean()
    out.insert(0, "pairs", df.groupby("method", sort=False).size())
    return out


def cmd_holdout(args, con: _Console) -> int:
    from .analysis import write_csv
    from .holdout import counterfactual_holdout, synthetic_truth

    adata, data_path = _read_data(args.data, layer=args.layer)
    out = _check_output_dir(args.out, [data_path])  # exists, is not an input, is writable
    for key, opt in ((args.batch_key, "--batch-key"), (args.label_key, "--label-key")):
        if key not in adata.obs.columns:
            raise UsageError(f"{opt} {key!r} is not an obs column of {data_path.name} (available: "
                             f"{[str(c) for c in adata.obs.columns]}).")
    pairs = _parse_pairs(args.pairs, set(adata.obs[args.label_key].astype(str)),
                         set(adata.obs[args.batch_key].astype(str)))
    settings = {k: v for k, v in (("preset", args.preset), ("n_genes", args.genes), ("max_epochs", args.max_epochs),
                                  ("patience", args.patience), ("batch_size", args.batch_size),
                                  ("max_time", args.max_time), ("device", args.device), ("threads", args.threads))
                if v is not None}
    baselines = [b for b in _split_list([args.baselines]) if b != "none"]
    truth = None
    if args.synthetic_truth:
        if "synthetic" not in adata.uns:
            raise UsageError("--synthetic-truth needs data written by make_synthetic (uns['synthetic']).")
        truth = synthetic_truth()
    bars = _TrainProgress(enabled=not args.quiet)

    def progress(info):
        if info.get("stage") == "train":
            return bars(info)
        bars.close()
        r = {row["method"]: row["r2_all"] for row in info.get("rows", [])}
        con.say(f"pair {info['pair']}/{info['n_pairs']} {info['label']} -> {info['target_batch']}: trained in "
                f"{info['train_s']:.0f} s; r2_all " + ", ".join(f"{k} {v:.3f}" for k, v in r.items()))

    con.say(f"read {data_path.name}: {adata.n_obs} cells x {adata.n_vars} genes; one model per held-out pair")
    try:
        df = counterfactual_holdout(adata, args.batch_key, args.label_key, pairs=pairs, min_cells=args.min_cells,
                                    methods=_split_list([args.methods]), baselines=baselines, seed=args.seed,
                                    progress=progress, truth=truth, **settings)
    finally:
        bars.close()
    path = write_csv(df, out / "holdout.csv")
    import pandas as pd

    with pd.option_context("display.width", 200, "display.float_format", "{:.3f}".format):
        print(holdout_summary(df).to_string())
    con.say(f"wrote {path}")
    return 0


# ----------------------------------------------------------------------------------------------
# demo
# ----------------------------------------------------------------------------------------------
def _display_available() -> bool:
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    import importlib.util

    return importlib.util.find_spec("napari") is not None


def _stratified_subsample(obs, key, n, seed):
    import numpy as np

    rng = np.random.default_rng(seed)
    codes = obs[key].astype(str).to_numpy()
    groups = sorted(set(codes))
    per = max(1, n // len(groups))
    idx = []
    for g in groups:
        where = np.flatnonzero(codes == g)
        idx.extend(rng.choice(where, min(per, where.size), replace=False).tolist())
    return np.sort(np.asarray(idx, dtype=np.int64))


DEMO_FULL = {"n_genes": 1024, "epochs": None, "cells": None, "mwu_cells": 300, "top_cells": 10}
DEMO_FAST = {"n_genes": 64, "epochs": 2, "cells": 240, "mwu_cells": 60, "top_cells": 2}


def cmd_demo(args, con: _Console) -> int:
    import pandas as pd

    from .analysis import top_genes_table, write_csv
    from .compare import compare_cells, ensure_layout, select_cells, stack_comparisons
    from .datasets import cellbench
    from .metrics import evaluate_model
    from .model import ScMEDAL

    cfg = dict(DEMO_FAST if args.fast else DEMO_FULL)
    if args.genes is not None:
        cfg["n_genes"] = args.genes
    if args.epochs is not None:
        cfg["epochs"] = args.epochs
    out = _check_output_dir(args.out, [])
    formats = _formats(args.formats)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    batch_key, label_key = "batch", "cell_line"

    adata = cellbench()
    if cfg["cells"]:
        adata = adata[_stratified_subsample(adata.obs, batch_key, cfg["cells"], args.seed)].copy()
    con.say(f"CellBench sample: {adata.n_obs} cells x {adata.n_vars} genes, "
            f"{adata.obs[batch_key].nunique()} batches, {adata.obs[label_key].nunique()} cell lines"
            + (" (reduced --fast mode)" if args.fast else ""))

    # 1. train -------------------------------------------------------------------------------
    t0 = time.perf_counter()
    # the default "auto" preset: batch size, lr, epochs and patience derived from the number of training cells
    kw = dict(batch_key=batch_key, label_key=label_key, n_genes=cfg["n_genes"], seed=args.seed)
    if args.device is not None:
        kw["device"] = args.device
    if args.threads is not None:
        kw["threads"] = args.threads
    model = ScMEDAL(adata, **kw)
    bars = _TrainProgress(enabled=not args.quiet)
    try:
        # epochs: None = derived; --fast caps at 2. Health is printed below, from model.health
        model.train(max_epochs=cfg["epochs"], progress=bars, health_warnings=False)
    finally:
        bars.close()
    timings["train_s"] = time.perf_counter() - t0
    con.say(f"trained FE, FEC and RE in {timings['train_s']:.1f} s")
    if report_training(model, con) and cfg["epochs"] is not None:
        con.say(f"(the epochs were capped at {cfg['epochs']} for speed, so health problems are expected)")

    # 2. genomap layout ----------------------------------------------------------------------
    t0 = time.perf_counter()
    con.say(f"computing the genomap layout of {len(model.genes)} genes (Gromov-Wasserstein)")
    layout = ensure_layout(model, seed=args.seed)
    timings["layout_s"] = time.perf_counter() - t0
    model_path = out / "model.safetensors"
    model.save(model_path)

    # 3. latents + metrics -------------------------------------------------------------------
    lat = adata.copy()
    model.write_to_adata(lat)
    _write_h5ad(lat, out / "latents.h5ad")
    t0 = time.perf_counter()
    table = evaluate_model(model, "test", seed=args.seed, target="protocol")
    metric_files = _write_metrics(table, out)
    timings["metrics_s"] = time.perf_counter() - t0

    # 4. genomap panels per cell line --------------------------------------------------------
    t0 = time.perf_counter()
    train_ad = adata  # the model was trained on this AnnData; compare on the same cells
    lines = sorted(train_ad.obs[label_key].astype(str).unique())
    batches = [str(b) for b in model.batches]
    panels = []
    overview_rows = []
    for line in lines:
        rows = []
        for b in batches:
            try:
                idx = select_cells(train_ad, {label_key: line, batch_key: b})
            except ScMEDALError:
                continue  # this line was not sequenced in this batch
            rows.append(compare_cells(model, idx, adata=train_ad, average=True, scale="zscore",
                                      group_name=f"{line} in {b}"))
        comp = stack_comparisons(rows)
        stem = f"genomap_{_safe(line)}"
        files = write_comparison_outputs(comp, out, stem, formats, args.dpi, gene_labels=10,
                                         columns=_demo_columns(comp),
                                         title=f"{line}: mean genomap of its cells in each batch (rows), per-gene "
                                               "z-scores")
        panels.append({"line": line, "stem": stem, "files": files, "rows": comp.row_titles,
                       "top": comp.top_genes_overall})
        overview_rows.append(compare_cells(model, select_cells(train_ad, {label_key: line}), adata=train_ad,
                                           average=True, scale="zscore", group_name=line))
    overview = stack_comparisons(overview_rows)
    write_comparison_outputs(overview, out, "genomap_overview", formats, args.dpi, gene_labels=0,
                             columns=_demo_columns(overview),
                             title="Cell lines (mean of all their cells), per-gene z-scores")
    # per-cell top genes for a few cells of each line
    per_cell = []
    for line in lines:
        idx = select_cells(train_ad, {label_key: line})[: cfg["top_cells"]]
        c = compare_cells(model, idx, adata=train_ad)
        t = top_genes_table(c.counterfactual_stack(), layout=layout, row_names=[r[0] for r in c.row_cells])
        t.insert(1, label_key, line)
        t.insert(2, batch_key, [c.row_batches[[r[0] for r in c.row_cells].index(n)] for n in t["cell"]])
        per_cell.append(t)
    write_csv(pd.concat(per_cell, ignore_index=True), out / "top_genes_cells.csv")
    timings["genomaps_s"] = time.perf_counter() - t0

    # 5. Mann-Whitney: counterfactuals to CEL-seq2 batches vs Drop-seq -----------------------
    t0 = time.perf_counter()
    proto = train_ad.obs.groupby(batch_key, observed=True)["protocol"].first().astype(str)
    a = [b for b in batches if proto.get(b) == "CEL-seq2"]
    bb = [b for b in batches if proto.get(b) == "Drop-seq"]
    mwu_idx = _stratified_subsample(train_ad.obs, label_key, cfg["mwu_cells"], args.seed)
    cf = compare_cells(model, mwu_idx, adata=train_ad)
    res, mwu_files = _pixel_test_outputs(cf, a, bb, out, "mwu_celseq2_vs_dropseq", ("CEL-seq2", "Drop-seq"),
                                         formats, args.dpi, alpha=0.05)
    timings["mwu_s"] = time.perf_counter() - t0
    con.say(f"Mann-Whitney U (CEL-seq2 vs Drop-seq counterfactuals, {len(mwu_idx)} cells): "
            f"{int(res.significant.sum())} of {len(res.table)} pixels significant at BH q < 0.05")

    # 6. report ------------------------------------------------------------------------------
    timings["total_s"] = time.perf_counter() - t_start
    summary = {
        "data": {"cells": int(adata.n_obs), "genes_in_file": int(adata.n_vars), "model_genes": len(model.genes),
                 "batches": batches, "cell_lines": lines, "fast": bool(args.fast)},
        "layout_shape": list(layout.shape), "timings_s": timings, "seed": args.seed,
        "training": {"derived": model.derived, "health": model.health,
                     "stopped": {k: h.get("stopped") for k, h in model.history.items()}},
        "mann_whitney": {"batches_a": a, "batches_b": bb, "cells": int(len(mwu_idx)),
                         "significant_pixels": int(res.significant.sum()), "tested_pixels": int(len(res.table))},
        "files": {"model": str(model_path), "latents": str(out / "latents.h5ad"), "metrics": metric_files,
                  "mann_whitney": mwu_files},
    }
    _write_json(out / "summary.json", summary)
    report = _write_text(out / "report.html", _report_html(summary, table, panels, res, formats, model))
    con.say(f"report: {report}  ({timings['total_s']:.0f} s in all)")

    # 7. viewer ------------------------------------------------------------------------------
    maybe_open_viewer(lat, model, overview, con, no_viewer=args.no_viewer, where=out)
    return 0


def maybe_open_viewer(adata, model, comparison, con: _Console, no_viewer: bool = False, where=None) -> bool:
    """Open napari with the results when a display is available and ``no_viewer`` is False.

    Calls ``napari_scmedal._napari.launch.open_viewer(adata, model, comparison)`` (imported lazily,
    so the core never imports Qt or napari).  Returns True when the viewer was opened.
    """
    if no_viewer:
        return False
    if not _display_available():
        con.say("no display: skipping the napari viewer (the results are in the report)")
        return False
    try:
        from ._napari.launch import open_viewer
    except ImportError as exc:
        con.say(f"napari viewer not opened: the GUI launcher is unavailable ({exc}); open "
                f"{Path(where or '.') / 'latents.h5ad'} in napari instead")
        return False
    con.say("opening napari with the results (close the window to finish)")
    open_viewer(adata, model, comparison)
    return True


def _demo_columns(comp) -> list[str]:
    """Figure columns of the demo: every expression version, FE - Original and the pure batch
    effect (counterfactual to b minus counterfactual to the own batch); the
    ``Counterfactual -> b - Original`` maps stay in the .npz arrays."""
    from .compare import FE_MINUS_ORIGINAL, cf_minus_own_name

    cols = comp.names_of_kind("expression") + [FE_MINUS_ORIGINAL] + [cf_minus_own_name(b) for b in comp.batches]
    return [c for c in cols if c in comp.images]


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(name))


def _training_html(model) -> str:
    """The report's training section: settings used (and why), how each network stopped, training health."""
    from ._training_report import health_lines, health_problems, settings_summary, stop_lines

    e = html.escape
    items = "".join(f"<li>{e(x)}</li>" for x in stop_lines(model.history) + health_lines(model.health))
    problems = health_problems(model.health)
    warn = ("<p style='color:#b34700'><b>Training health problems:</b></p><ul style='color:#b34700'>"
            + "".join(f"<li>{e(p)}</li>" for p in problems) + "</ul>") if problems else ""
    return (f"<h2>Training</h2><p>Settings: {e(settings_summary(model.derived) or 'not recorded')}.</p>"
            f"<ul>{items}</ul>{warn}")


def _report_html(summary, table, panels, res, formats, model) -> str:
    import pandas as pd

    from .metrics import metrics_rows

    e = html.escape
    img_ext = "png" if "png" in formats else formats[0]
    rows = pd.DataFrame(metrics_rows(table))
    metrics_html = "<p>No metrics.</p>"
    if len(rows):
        names = {"asw": "ASW", "inv_db": "1/DB", "ch": "CH", "ilisi": "iLISI", "clisi": "cLISI", "nmi": "NMI"}
        sc = rows[rows["metric"].isin(list(names))].copy()
        sc["metric"] = sc["metric"].map(names)
        sc["latent"] = sc["latent"].str.upper()
        pivot = sc.pivot_table(index="latent", columns=["grouping", "metric"], values="value", aggfunc="first")
        metrics_html = pivot.to_html(float_format=lambda v: f"{v:.3f}", classes="tbl")
        cl = rows[rows["grouping"].str.startswith("classify:")]
        if len(cl):
            target = cl["grouping"].iloc[0].split(":", 1)[1]
            acc = ", ".join(f"{k.upper()} {v:.3f}" + ("" if lo != lo else f" (95% CI {lo:.3f}-{hi:.3f})")
                            for k, v, lo, hi in zip(cl["latent"], cl["value"], cl["ci_low"], cl["ci_high"]))
            acc += f"; chance (majority class) {cl['chance'].iloc[0]:.3f}"
            metrics_html += (f"<p>Random-forest classification of <code>{e(target)}</code> from the latents "
                             f"({e(cl['metric'].iloc[0])}): {acc}. Every batch is seen in training, so this "
                             "mostly measures batch recognition (METHOD.md section 4).</p>")
    t = summary["timings_s"]
    d = summary["data"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>scMEDAL demo report</title>",
        "<style>body{font-family:sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;color:#222}"
        "img{max-width:100%;border:1px solid #ddd}.tbl{border-collapse:collapse;font-size:0.9em}"
        ".tbl td,.tbl th{border:1px solid #ccc;padding:3px 6px}code{background:#f4f4f4}</style></head><body>",
        "<h1>scMEDAL demo on the CellBench sample</h1>",
        f"<p>{d['cells']} cells, {d['model_genes']} model genes (genomap {summary['layout_shape'][0]} x "
        f"{summary['layout_shape'][1]}), batches: {e(', '.join(d['batches']))}; cell lines: "
        f"{e(', '.join(d['cell_lines']))}.{' <b>Reduced --fast mode.</b>' if d['fast'] else ''}</p>",
        f"<p>Training {t['train_s']:.0f} s, genomap layout {t['layout_s']:.0f} s, total {t['total_s']:.0f} s. "
        f"Model: <code>model.safetensors</code>; latents: <code>latents.h5ad</code> (obsm).</p>",
        _training_html(model),
        "<h2>Latent-space metrics (test split, METHOD.md section 4)</h2>",
        "<p>Batch-invariant latents (FE, FEC) want low batch scores and high cell-line scores; the RE latent "
        "wants high batch scores. Files: <code>metrics.csv</code>, <code>metrics.json</code>.</p>",
        metrics_html,
        "<h2>Genomaps</h2>",
        "<p>Each pixel is a gene; co-expressed genes sit close together. Pixel values are per-gene z-scores "
        "over a reference stack of cells in every version (METHOD.md section 5), so all panels share one colour "
        "scale; differences use a diverging scale centred on zero. The framed counterfactual is the row's own "
        "batch; <i>Counterfactual &rarr; b - Counterfactual &rarr; own batch</i> is the batch effect the model "
        "attributes to moving the cells to batch b. Red circles: the 10 genes varying most across the "
        "counterfactual batches. The arrays of every version (also <i>Counterfactual &rarr; b - Original</i>) "
        "are in the <code>.npz</code> files.</p>",
        "<p><b>Reading the counterfactuals.</b> They use the default <code>method=\"balanced\"</code> "
        "(docs/model.md, \"Counterfactuals\"): each cell's RE reconstruction changed by the batch change "
        "measured on its own cell line where that line was seen in both batches, else on the other lines "
        "(extrapolated, flagged). Between the CEL-seq2 plates the real differences are about the size of "
        "sampling noise. The Mann-Whitney test treats every cell x batch genomap as an independent sample, "
        "as the paper does, so its p-values are optimistic.</p>",
        f"<h3>Overview: one row per cell line</h3><img src='genomap_overview.{img_ext}'>",
    ]
    for p in panels:
        top = p["top"]
        genes = ", ".join(e(str(g)) for g in top["gene"].head(10)) if len(top) else "-"
        parts.append(f"<h3>{e(p['line'])}</h3><p>Rows: {e('; '.join(p['rows']))}. Top genes across "
                     f"counterfactual batches: {genes} (<code>{p['stem']}_top_genes.csv</code>).</p>"
                     f"<img src='{p['stem']}.{img_ext}'>")
    sig = res.significant_genes
    parts += [
        "<h2>Per-pixel Mann-Whitney U: counterfactuals to CEL-seq2 batches vs Drop-seq</h2>",
        f"<p>{res.n_a} vs {res.n_b} counterfactual genomaps ({summary['mann_whitney']['cells']} cells); "
        f"Benjamini-Hochberg over {len(res.table)} tested pixels: <b>{int(res.significant.sum())}</b> significant "
        f"at q &lt; {res.alpha:g} (<code>mwu_celseq2_vs_dropseq.csv</code>, "
        f"<code>mwu_celseq2_vs_dropseq_significant.csv</code>).</p>",
        f"<img src='mwu_celseq2_vs_dropseq.{img_ext}'>",
    ]
    if len(sig):
        sig = sig.reindex(sig["diff"].abs().sort_values(ascending=False).index)
        parts.append("<p>The 20 significant pixels with the largest difference of means "
                     f"({e(res.group_b)} - {e(res.group_a)}):</p>")
        parts.append(sig.head(20).to_html(index=False, float_format=lambda v: f"{v:.3g}", classes="tbl"))
    parts.append("<p>Per-cell top genes: <code>top_genes_cells.csv</code>.</p></body></html>")
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------
# parser
# ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("common options")
    g.add_argument("--seed", type=int, default=0, help="random seed for training, sampling and layouts (default 0)")
    g.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    g.add_argument("--device", default=None,
                   help="torch device: cpu, cuda, cuda:0, mps or auto (default: auto = GPU when available)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bars or messages (errors still shown)")

    p = argparse.ArgumentParser(
        prog=PROG,
        description="scMEDAL for single-cell data: train fixed/random-effects autoencoders, write latents, "
                    "genomaps of counterfactuals, metrics, and run the end-to-end demo.",
        epilog="Run 'scmedal COMMAND --help' for the options of one command. Same as 'python -m napari_scmedal'.",
    )
    from . import __version__

    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("train", parents=[common], help="train scMEDAL (FE, RE and FEC with labels) and save the model",
                       description="Train FE and RE (and FEC when --label-key is given) on an .h5ad file and save "
                                   "the model as one safetensors file.")
    t.add_argument("data", metavar="DATA.h5ad", help="input AnnData (raw counts or log-normalised; never modified)")
    t.add_argument("--batch-key", required=True, help="obs column with the batch (donor, sample, run...)")
    t.add_argument("--label-key", default=None, help="obs column with cell types (adds the FEC model)")
    t.add_argument("--genes", type=int, default=None, help="number of highly variable genes (default: preset's)")
    t.add_argument("--preset", choices=["auto", "paper", "quick"], default="auto",
                   help="'auto' (default): batch size, learning rate, epochs and patience derived from the number of "
                        "training cells; 'paper': the reference settings, meant for tens of thousands of cells "
                        "(batch 512, lr 1e-4, up to 500 epochs); 'quick': fixed laptop settings (batch 64, lr 1e-3, "
                        "up to 150 epochs)")
    t.add_argument("--epochs", "--max-epochs", dest="epochs", type=int, default=None,
                   help="maximum epochs per network (default: the preset's, derived from the data with 'auto')")
    t.add_argument("--patience", type=int, default=None, help="early-stopping patience (default: the preset's)")
    t.add_argument("--batch-size", type=int, default=None, help="minibatch size (default: the preset's)")
    t.add_argument("--max-time", type=float, default=None, metavar="SECONDS",
                   help="cap the whole training at about this many seconds: each network stops at the end of the "
                        "epoch that crosses its share, keeping its best weights (default: no cap)")
    t.add_argument("--layer", default=None, help="use this layer instead of X (e.g. counts)")
    t.add_argument("--input-kind", choices=["auto", "counts", "lognorm"], default="auto",
                   help="what the matrix holds: raw counts, log1p-normalised values, or 'auto' (default: integers "
                        "are counts, docs/data.md)")
    t.add_argument("--layout", action=argparse.BooleanOptionalAction, default=True,
                   help="compute the genomap layout now and store it in the model file (default: yes)")
    t.add_argument("--backed", action="store_true",
                   help="train out of core: stream the .h5ad in blocks instead of loading it (docs/scaling.md)")
    t.add_argument("--chunk-cells", type=int, default=None,
                   help="cells read from the file at once with --backed (default 8192)")
    t.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: bfloat16 autocast of the forward passes (for CUDA GPUs; default fp32)")
    t.add_argument("--steps-per-epoch", type=int, default=None,
                   help="cap the minibatches of each epoch (partial epochs, e.g. for benchmarks)")
    t.add_argument("--out", required=True, metavar="MODEL", help="output model file (e.g. model.safetensors)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("embed", parents=[common], help="write latents (and optionally reconstructions, "
                       "counterfactuals) to a new .h5ad", description="Write the FE/FEC/RE latents of every cell "
                       "to a new .h5ad (obsm); optionally reconstructions and counterfactuals as layers.")
    e.add_argument("model", metavar="MODEL", help="model file written by 'scmedal train'")
    e.add_argument("data", metavar="DATA.h5ad", help="cells to embed (genes and batches must fit the model)")
    e.add_argument("--out", required=True, metavar="OUT.h5ad", help="new output file (never an input)")
    e.add_argument("--reconstructions", action="store_true", help="add FE and RE reconstructions as layers")
    e.add_argument("--counterfactuals", nargs="*", default=None, metavar="BATCH",
                   help="add counterfactual layers for these batches (no name: every batch)")
    e.add_argument("--layer", default=None, help="use this layer instead of X")
    e.add_argument("--size-factor-key", default=None, metavar="OBS_COLUMN",
                    help="obs column of per-cell total counts, used as library sizes instead of the sum over the "
                         "model's normalisation genes (for count data lacking some of them)")
    e.add_argument("--backed", action="store_true",
                   help="for files larger than memory: latents computed block by block, written into a copy of "
                        "the file (latents only)")
    e.set_defaults(func=cmd_embed)

    gm = sub.add_parser("genomap", parents=[common], help="genomap arrays, panels and top-gene tables of chosen cells",
                        description="Genomap images of chosen cells or groups in every version (original, FE, RE, "
                                    "counterfactuals, differences): arrays (.npz), figure panels, top-gene CSVs and "
                                    "optionally a per-pixel Mann-Whitney U test between two groups of batches.")
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
                    help="per-pixel Mann-Whitney U between counterfactuals to two groups of batches "
                         "(comma-separated), on the selected cells")
    gm.add_argument("--test-method", choices=["mannwhitney", "mixedlm"], default="mannwhitney",
                    help="--test's model: mannwhitney (every cell x batch genomap independent; default) or "
                         "mixedlm (value ~ group + (1 | batch): each batch in BATCHES_A is group A, in BATCHES_B "
                         "group B; needs 2+ batches per group)")
    gm.add_argument("--test-dist", choices=["normal", "t"], default="normal",
                    help="mixedlm p-values: normal (statsmodels' z-test; default) or t with n_batches - 2 degrees "
                         "of freedom (better calibrated with few batches)")
    gm.add_argument("--alpha", type=float, default=0.05, help="FDR level for --test (default 0.05)")
    gm.add_argument("--layer", default=None)
    gm.add_argument("--size-factor-key", default=None, metavar="OBS_COLUMN",
                    help="obs column of per-cell total counts, used as library sizes instead of the sum over the "
                         "model's normalisation genes (for count data lacking some of them)")
    gm.add_argument("--backed", action="store_true",
                    help="open the data backed (files larger than memory): only the chosen cells are read")
    gm.add_argument("--out", required=True, metavar="DIR", help="output folder")
    gm.set_defaults(func=cmd_genomap)

    ev = sub.add_parser("evaluate", parents=[common], help="METHOD.md section 4 metrics as CSV and JSON",
                        description="1/DB, CH and ASW by batch and by label for each latent on a split of the "
                                    "training data; optional mixed-effects random-forest classification.")
    ev.add_argument("model", metavar="MODEL")
    ev.add_argument("data", metavar="DATA.h5ad", help="the AnnData the model was trained on")
    ev.add_argument("--split", choices=["train", "val", "test"], default="test")
    ev.add_argument("--target", default=None, help="obs column to classify from FE, RE and FE+RE latents")
    ev.add_argument("--held-out-batches", action="store_true",
                    help="classify with whole batches held out (the fairer protocol)")
    ev.add_argument("--folds", type=int, default=5, metavar="K",
                    help="folds of the classification (default 5; 1 = the old single train/test split)")
    ev.add_argument("--baselines", default="", metavar="pca,harmony",
                    help="also score these baseline latents on the same cells: pca (PCA of the model's "
                         "log-normalised genes) and/or harmony (Harmony on that PCA; needs napari-scmedal[harmony])")
    ev.add_argument("--subsample", type=int, default=10000, help="cells per score (default 10000)")
    ev.add_argument("--layer", default=None)
    ev.add_argument("--size-factor-key", default=None, metavar="OBS_COLUMN",
                    help="obs column of per-cell total counts, used as library sizes instead of the sum over the "
                         "model's normalisation genes (for count data lacking some of them)")
    ev.add_argument("--backed", action="store_true",
                    help="open the data backed (files larger than memory): latents are computed block by block")
    ev.add_argument("--out", required=True, metavar="DIR")
    ev.set_defaults(func=cmd_evaluate)

    ho = sub.add_parser("holdout", parents=[common], help="counterfactual accuracy on held-out cell type x batch "
                        "pairs, with baselines", description="For each (label, target batch) pair, train a model without "
                        "those cells, send the label's cells of the other batches into the target batch and compare "
                        "the mean prediction with the held-out cells' mean (or the exact synthetic truth). Writes "
                        "holdout.csv (one row per pair and method/baseline) and prints the mean per method.")
    ho.add_argument("data", metavar="DATA.h5ad")
    ho.add_argument("--batch-key", required=True, help="obs column with the batch")
    ho.add_argument("--label-key", required=True, help="obs column with cell types")
    ho.add_argument("--pairs", action="append", metavar="LABEL:BATCH[,LABEL:BATCH]",
                    help="pairs to hold out (default: every pair with --min-cells cells on both sides)")
    ho.add_argument("--min-cells", type=int, default=30, help="cells a default pair needs (default 30)")
    ho.add_argument("--methods", default="balanced", help="counterfactual methods, comma-separated (default: "
                    "balanced, the model's default; also matched, reference)")
    ho.add_argument("--baselines", default="identity,mean_shift,balanced_shift",
                    help="baselines, comma-separated, or 'none' (default identity,mean_shift,balanced_shift)")
    ho.add_argument("--preset", default=None, help="training preset (default: the model's default)")
    ho.add_argument("--genes", type=int, default=None, help="highly variable genes per model (default: the model's)")
    ho.add_argument("--max-epochs", type=int, default=None, help="maximum epochs per network")
    ho.add_argument("--patience", type=int, default=None, help="early-stopping patience")
    ho.add_argument("--batch-size", type=int, default=None, help="minibatch size")
    ho.add_argument("--max-time", type=float, default=None, help="seconds per model (all its networks)")
    ho.add_argument("--synthetic-truth", action="store_true",
                    help="score against the exact expected expression of make_synthetic data (uns['synthetic'])")
    ho.add_argument("--layer", default=None, help="use this layer instead of X")
    ho.add_argument("--out", required=True, metavar="DIR", help="output folder (holdout.csv)")
    ho.set_defaults(func=cmd_holdout)

    d = sub.add_parser("demo", parents=[common], help="end-to-end demo on the bundled CellBench sample",
                       description="Train scMEDAL (default 'auto' preset: settings derived from the data) on the "
                                   "bundled CellBench sample, write latents, "
                                   "metrics, genomap panels per cell line, top genes, a Mann-Whitney example "
                                   "(CEL-seq2 vs Drop-seq) and report.html; then open napari when a display is "
                                   "available.")
    d.add_argument("--out", default="scmedal_demo", metavar="DIR", help="output folder (default ./scmedal_demo)")
    d.add_argument("--fast", action="store_true",
                   help="reduced mode for tests: fewer cells, 64 genes, at most 2 epochs per network (everything "
                        "still runs; expect training-health warnings)")
    d.add_argument("--genes", type=int, default=None, help="model genes (default 1024 = 32 x 32 genomaps)")
    d.add_argument("--epochs", "--max-epochs", dest="epochs", type=int, default=None,
                   help="maximum epochs per network (default: derived from the data by the 'auto' preset)")
    d.add_argument("--formats", default="png", help="figure formats, comma-separated (default png)")
    d.add_argument("--dpi", type=int, default=150, help="figure resolution (default 150)")
    d.add_argument("--no-viewer", action="store_true", help="do not open napari at the end")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return 2
    con = _Console(quiet=args.quiet)
    try:
        _setup_runtime(args)
        return int(args.func(args, con) or 0)
    except ScMEDALError as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
