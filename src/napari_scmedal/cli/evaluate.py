"""``scmedal evaluate``: the latent-space metrics (METHOD.md section 4) as CSV and JSON, with the model's
training health."""
from __future__ import annotations

from ..report import report_health, write_metrics
from ._common import _Console, _data_options, _load_model, _read_data
from ._paths import UsageError, _check_output_dir


def cmd_evaluate(args, con: _Console) -> int:
    from ..metrics import check_baselines, evaluate_model

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
    files = write_metrics(table, out)
    _say_scores(table, con)
    report_health(model.health, con)
    con.say(f"wrote {', '.join(files)}")
    return 0


def _say_scores(table: dict, con: _Console) -> None:
    """One line per latent (batch and label scores) and one for the classification."""
    from ..metrics import LATENT_NAMES

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


def add_parser(sub, common):
    """Add ``evaluate`` to the subcommands ``sub`` (``common``: the options every command has)."""
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
    _data_options(ev, "open the data backed (files larger than memory): latents are computed block by block")
    ev.add_argument("--out", required=True, metavar="DIR")
    ev.set_defaults(func=cmd_evaluate)
    return ev
