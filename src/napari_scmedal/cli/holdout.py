"""``scmedal holdout``: counterfactual accuracy on held-out cell type x batch pairs, with baselines."""
from __future__ import annotations

from ..report import holdout_summary
from ._common import _Console, _read_data, _split_list, _train_bars
from ._paths import UsageError, _check_output_dir


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


def _settings(args) -> dict:
    """The model and training options given on the command line."""
    return {k: v for k, v in (("preset", args.preset), ("n_genes", args.genes), ("max_epochs", args.max_epochs),
                              ("patience", args.patience), ("batch_size", args.batch_size),
                              ("max_time", args.max_time), ("device", args.device), ("threads", args.threads))
            if v is not None}


def cmd_holdout(args, con: _Console) -> int:
    from .._utils import write_csv
    from ..holdout import counterfactual_holdout, synthetic_truth

    adata, data_path = _read_data(args.data, layer=args.layer)
    out = _check_output_dir(args.out, [data_path])  # exists, is not an input, is writable
    for key, opt in ((args.batch_key, "--batch-key"), (args.label_key, "--label-key")):
        if key not in adata.obs.columns:
            raise UsageError(f"{opt} {key!r} is not an obs column of {data_path.name} (available: "
                             f"{[str(c) for c in adata.obs.columns]}).")
    pairs = _parse_pairs(args.pairs, set(adata.obs[args.label_key].astype(str)),
                         set(adata.obs[args.batch_key].astype(str)))
    baselines = [b for b in _split_list([args.baselines]) if b != "none"]
    truth = None
    if args.synthetic_truth:
        if "synthetic" not in adata.uns:
            raise UsageError("--synthetic-truth needs data written by make_synthetic (uns['synthetic']).")
        truth = synthetic_truth()
    bars = _train_bars(enabled=not args.quiet)

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
                                    progress=progress, truth=truth, **_settings(args))
    finally:
        bars.close()
    path = write_csv(df, out / "holdout.csv")
    import pandas as pd

    with pd.option_context("display.width", 200, "display.float_format", "{:.3f}".format):
        print(holdout_summary(df).to_string())
    con.say(f"wrote {path}")
    return 0


def add_parser(sub, common):
    """Add ``holdout`` to the subcommands ``sub`` (``common``: the options every command has)."""
    ho = sub.add_parser("holdout", parents=[common],
                        help="counterfactual accuracy on held-out cell type x batch pairs, with baselines",
                        description="For each (label, target batch) pair, train a model without those cells, send "
                                    "the label's cells of the other batches into the target batch and compare the "
                                    "mean prediction with the held-out cells' mean (or the exact synthetic truth). "
                                    "Writes holdout.csv (one row per pair and method/baseline) and prints the mean "
                                    "per method.")
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
    return ho
