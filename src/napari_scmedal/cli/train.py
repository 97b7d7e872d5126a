"""``scmedal train``: train scMEDAL on an .h5ad file and save the model (also under ``torchrun``)."""
from __future__ import annotations

import argparse
import time

from ..report import report_training
from ._common import _Console, _read_data, _train_bars
from ._paths import UsageError, _check_output_file, _existing_file


def cmd_train(args, con: _Console) -> int:
    """``scmedal train``; also the per-process entry point under ``torchrun -m napari_scmedal train``."""
    from ..distributed import init_from_env, launched_by_torchrun, shutdown

    if not launched_by_torchrun():
        return _train(args, con, None)
    comm = init_from_env(args.device)
    try:
        if not comm.is_main:  # one voice: rank 0 reports, the others stay quiet unless they fail
            con = _Console(quiet=True)
        return _train(args, con, comm)
    finally:
        shutdown()


def _check_options(args) -> None:
    if args.chunk_cells is not None and args.chunk_cells < 1:
        raise UsageError(f"--chunk-cells must be at least 1 (got {args.chunk_cells}).")
    if args.steps_per_epoch is not None and args.steps_per_epoch < 1:
        raise UsageError(f"--steps-per-epoch must be at least 1 (got {args.steps_per_epoch}).")
    if args.max_time is not None and not args.max_time > 0:
        raise UsageError(f"--max-time must be a positive number of seconds (got {args.max_time:g}).")


def _model(args, con: _Console, kw: dict, bars=None):
    """The untrained model on the data (streamed from the file with ``--backed``, its two passes shown by
    ``bars``) and the output path."""
    from ..model import ScMEDAL

    if args.backed:
        data_path = _existing_file(args.data, "data file")
        out = _check_output_file(args.out, [data_path], "model file")
        con.say(f"training out of core from {data_path.name} (read in blocks of "
                f"{args.chunk_cells or 'the default number of'} cells; the file is never loaded whole)")
        model = ScMEDAL(data_path, layer=args.layer, backed=True, chunk_cells=args.chunk_cells, progress=bars, **kw)
        if bars is not None:
            bars.close()
        assert model._plan is not None  # backed=True: the model trains out of core
        info = model._plan.info
        con.say(f"streamed {info['cells_in_file']} cells x {info['genes_in_file']} genes in "
                f"{info['pass1_s'] + info['pass2_s']:.1f} s ({info['cells_removed']} cells and "
                f"{info['genes_removed']} genes filtered out)")
    else:
        adata, data_path = _read_data(args.data, layer=args.layer)
        out = _check_output_file(args.out, [data_path], "model file")
        con.say(f"read {data_path.name}: {adata.n_obs} cells x {adata.n_vars} genes")
        model = ScMEDAL(adata, **kw)
    return model, out


def _train(args, con: _Console, comm) -> int:
    main = comm is None or comm.is_main
    _check_options(args)
    kw = {"batch_key": args.batch_key, "label_key": args.label_key, "seed": args.seed, "preset": args.preset,
          "input_kind": args.input_kind}
    if args.genes is not None:
        kw["n_genes"] = args.genes
    if args.device is not None:
        kw["device"] = args.device
    if args.threads is not None:
        kw["threads"] = args.threads
    bars = _train_bars(enabled=not args.quiet and main)
    model, out = _model(args, con, kw, bars)
    where = "" if comm is None else (f" on {comm.world} processes ({'NCCL' if comm.device.type == 'cuda' else 'gloo'}, "
                                     f"global minibatch split across them)")
    con.say(f"training scMEDAL ({args.preset} preset) on {len(model.genes)} genes, "
            f"{len(model.batches)} batches" + (f", labels from {args.label_key!r}" if args.label_key else "") + where)
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
            from ..compare import ensure_layout

            con.say("computing the genomap layout (Gromov-Wasserstein) to store with the model")
            ensure_layout(model, seed=args.seed)
        model.save(out)  # atomic: a temporary file in the same folder, then renamed
        con.say(f"wrote {out}")
        if n_problems:
            con.warn(f"the model was saved, but its training health check found {n_problems} problem(s) (above): "
                     "check them before trusting its latents and counterfactuals.")
    if comm is not None:
        comm.barrier()  # the other ranks wait until rank 0 has written the model
    return 0


def add_parser(sub, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``train`` to the subcommands ``sub`` (``common``: the options every command has)."""
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
    return t
