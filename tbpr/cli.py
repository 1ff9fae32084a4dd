"""The ``tbpr`` command line: synth, train, eval, ship, search, bench, reproduce, summary, params, diff."""
from __future__ import annotations

import argparse
import contextlib
import json
import sys

from . import shipped
from .bench import main as bench_main
from .config import PROFILES, parse_overrides
from .data.formats import DatasetError
from .evaluate import evaluate
from .experiments import load_trained, run
from .papers import MODEL_NAMES, count_parameters, create_model, get_config, parameter_table, profile_diff
from .reproduce import run_notebooks
from .summary import update_readme, write_summary
from .synthpedes import main as synth_main


def cmd_synth(args) -> None:
    status = synth_main(args.rest)
    if status:
        raise SystemExit(status)


def _rerank_k(args, cfg) -> int:
    """``--rerank-k``, or the config's ``rerank_k`` (CADA-L's top-k at the paper profile) when not given."""
    return args.rerank_k if args.rerank_k is not None else getattr(cfg, "rerank_k", 0)


def cmd_train(args) -> None:
    overrides = parse_overrides(args.set)
    rerank_k = _rerank_k(args, get_config(args.model, args.profile, overrides))
    result = run(args.model, args.profile, overrides, dataset=args.dataset,
                 data_root=args.data_root, seed=args.seed, device=args.device,
                 rerank_k=rerank_k, cache=not args.no_cache)
    return json.dumps({"run_dir": result.run_dir, "train_seconds": round(result.train_seconds, 1),
                       **result.metrics}, indent=1)


def cmd_eval(args) -> None:
    cfg = get_config(args.model, args.profile, parse_overrides(args.set))
    records = shipped.split_records(args.dataset, args.data_root, args.profile, args.split)  # no training data
    if args.checkpoint is None:  # the run cache's model of this config, else the shipped one
        model, source, _ = shipped.trained(args.model, args.profile, parse_overrides(args.set), dataset=args.dataset,
                                           data_root=args.data_root, device=args.device)
        print(f"tbpr eval: {args.model} from the {source}")
    else:
        model = load_trained(args.model, cfg, args.checkpoint, official_vocab=args.official_vocab)
    metrics = evaluate(model.to(args.device), records, model.cfg.data,
                       device=args.device, rerank_k=_rerank_k(args, cfg))
    return json.dumps(metrics, indent=1)


def cmd_search(args) -> str:
    from .explorer import Explorer  # here, not at the top: matplotlib + ipywidgets, 1.5 s, only search draws
    from .viz import save_figure

    if args.top < 1:
        raise ValueError(f"--top {args.top}: give a whole number >= 1")
    name, model, source, metrics = _search_model(args)
    print(f"tbpr search: {name} from the {source}")
    explorer = Explorer({name: model}, images=args.images, metrics={name: metrics})
    for path, why in explorer.skipped:
        print(f"tbpr search: skipped {path}: cannot read it as an image ({why})")
    index, scores = explorer.search(name, args.query, args.top)
    answer = {"query": args.query, "model": name, "source": source, "images": str(explorer.folder),
              "searched": len(explorer.eval_set.image_paths), "skipped": [str(p) for p, _ in explorer.skipped],
              "ranking": [{"rank": r + 1, "image": str(explorer.eval_set.image_paths[i]), "score": round(s, 4)}
                          for r, (i, s) in enumerate(zip(index.tolist(), scores.tolist()))]}
    if args.out:
        fig = explorer.words_figure(name, args.query, args.top, words=args.words)
        answer.update(grid=str(save_figure(fig, args.out)), words=explorer.last["words"], no_map=explorer.last["no_map"])
    return json.dumps(answer, indent=1)


def _search_model(args):
    """(name, model, where it came from, its metrics): --checkpoint, else the run cache's or the
    shipped model of --model (default: the shipped model with the best recorded R@1)."""
    if args.checkpoint:
        model = shipped.load_checkpoint_model(args.checkpoint, args.device)
        if args.model and args.model != model.name:
            raise ValueError(f"--checkpoint {args.checkpoint} holds a {model.name} model, not {args.model}; "
                             "drop --model or give a checkpoint of it")
        return model.name, model, f"checkpoint {args.checkpoint}", {}
    name = args.model or _best_shipped()
    model, source, metrics = shipped.trained(name, args.profile, parse_overrides(args.set), device=args.device)
    return name, model, source, metrics


def _best_shipped() -> str:
    ranked = sorted(shipped.available(), key=lambda n: -shipped.manifest(n)["metrics"]["R1"])
    if not ranked:
        raise ValueError("no model is shipped yet (tbpr/shipped/): give --model NAME (trained with "
                         "`tbpr train NAME`) or --checkpoint PATH, or make them with `tbpr ship all`")
    return ranked[0]


def cmd_ship(args) -> str:
    names = list(MODEL_NAMES) if "all" in args.model else list(dict.fromkeys(args.model))
    made = shipped.ship_all(names, args.profile, folder=args.out, device=args.device)
    sizes = shipped.sizes(args.out)
    for name, size in sizes.items():
        print(f"{name:6s} {size / 1e6:6.2f} MB  R1 {shipped.manifest(name, args.out)['metrics']['R1']:5.1f}"
              + ("  (shipped now)" if name in made else ""))
    total = sum(sizes.values())
    print(f"total  {total / 1e6:6.2f} MB of the {shipped.BUDGET_BYTES / 1e6:.0f} MB budget")
    return json.dumps({"shipped": {n: {"file": str(shipped.folder_path(args.out) / m["file"]), "bytes": m["bytes"], "R1": m["metrics"]["R1"]}
                                   for n, m in made.items()},
                       "total_bytes": total, "budget_bytes": shipped.BUDGET_BYTES}, indent=1)


def cmd_bench(args) -> None:
    bench_main(args.rest)


def cmd_pretrain(args) -> None:
    from .pretrain import main as pretrain_main  # imported where used: the recipes build CADA (0.5 s)
    pretrain_main(args.rest)


def cmd_reproduce(args) -> None:
    run_notebooks(args.profile, only=args.only, device=args.device, force=args.force,
                  seeds=args.seeds)


def cmd_summary(args) -> None:
    print(write_summary())
    if args.readme:
        print(update_readme())


def cmd_params(args) -> None:
    model = create_model(args.model, args.profile, device="meta", **parse_overrides(args.set))
    for name, n in parameter_table(model).items():
        print(f"{name:40s} {n:>14,}")
    print(f"{'total':40s} {count_parameters(model):>14,}")


def cmd_diff(args) -> str:
    rows = profile_diff(args.model, args.a, args.b)
    if not rows:
        return f"{args.model}: profiles {args.a} and {args.b} are the same"
    return "\n".join(f"{field}: {a!r} -> {b!r}  # {reason or 'no reason recorded'}"
                     for field, a, b, reason in rows)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", choices=MODEL_NAMES, help="the paper's model")
    p.add_argument("--profile", default="quick", choices=PROFILES)
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="config overrides (dotted keys)")


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="synthpedes",
                   choices=["synthpedes", "cuhk-pedes", "icfg-pedes", "rstpreid"])
    p.add_argument("--data-root", default=None, help="dataset folder (default: rendered SynthPedes)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--rerank-k", type=int, default=None,
                   help="re-rank each query's top-k (CADA; 0 = none); default: the config's rerank_k")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tbpr", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="render SynthPedes (tbpr synth --profile quick --out DIR)",
                       add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("train", help="train + evaluate one configuration (cached)")
    _model_args(p)
    _data_args(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cache", action="store_true", help="retrain even if a cached result exists")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint on a split")
    _model_args(p)
    _data_args(p)
    p.add_argument("--checkpoint", default=None, help="model.safetensors written by training, or a checkpoint "
                   "released with the paper's official code (converted; use --profile official); default: the "
                   "run cache's model of this config (seed 0), else the shipped one (tbpr/shipped/)")
    p.add_argument("--official-vocab", default=None, help="SSAN's released checkpoint: the code's word list "
                   "(processed_data/ind2word.pkl)")
    p.add_argument("--split", default="test", choices=["val", "test"])
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("search", help="rank a folder of your own pedestrian images for a description and draw "
                                      "the top images with the word maps: tbpr search \"a woman in a red jacket\" "
                                      "--images DIR --out grid.png")
    p.add_argument("query", help="the description, in quotes")
    p.add_argument("--images", required=True, help="folder of images (jpg, png, ...; unreadable ones are named "
                                                    "and skipped)")
    p.add_argument("--model", choices=MODEL_NAMES, default=None,
                   help="the paper's model: its run in the cache, else the shipped one (default: the shipped "
                        "model with the best recorded R@1)")
    p.add_argument("--checkpoint", default=None, help="a model.safetensors to use instead")
    p.add_argument("--profile", default="quick", choices=PROFILES)
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="config overrides of the cached run to use")
    p.add_argument("--top", type=int, default=10, help="how many images to rank (default 10)")
    p.add_argument("--out", default=None, help="PNG grid: the top images, then one row of maps per word")
    p.add_argument("--words", nargs="*", default=None,
                   help="words / phrases to map (default: the query's words the model explains, "
                        "without articles, prepositions and pronouns)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("ship", help="copy the quick full model (seed 0, trained if not cached) of a paper into "
                                    "tbpr/shipped/ with its manifest: tbpr ship ssan | all")
    p.add_argument("model", nargs="+", choices=[*MODEL_NAMES, "all"])
    p.add_argument("--profile", default="quick", choices=PROFILES)
    p.add_argument("--out", default=None, help="folder of shipped models (default: tbpr/shipped/)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_ship)

    p = sub.add_parser("bench", help="benchmarks: tbpr bench eval | <model> | all", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("pretrain", help="re-create zoo weights: tbpr pretrain NAME|all [--profile smoke]",
                       add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("reproduce", help="execute the notebooks with papermill at a profile")
    p.add_argument("--profile", default="quick", choices=(*PROFILES, "large"),
                   help="large = paper-size models on SynthPedes at CUHK-PEDES size (a GPU run)")
    p.add_argument("--only", nargs="*", help="notebook name prefixes, e.g. 00 02_ssan")
    p.add_argument("--device", default="cpu")
    p.add_argument("--force", action="store_true", help="re-execute notebooks already executed")
    p.add_argument("--seeds", nargs="*", type=int, help="seeds per ablation row (default: 3 at quick)")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("summary", help="write figures/summary.md from the notebooks' outputs")
    p.add_argument("--readme", action="store_true", help="also regenerate the README's results section")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("params", help="parameter table of a model (built on the meta device)")
    _model_args(p)
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("diff", help="every config field two profiles set differently, with the reason "
                                    "(tbpr diff cada paper official)")
    p.add_argument("model", choices=MODEL_NAMES)
    p.add_argument("a", choices=PROFILES)
    p.add_argument("b", choices=PROFILES)
    p.set_defaults(func=cmd_diff)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run one command. Its JSON answer (train, eval) is the only thing on stdout, so
    ``tbpr train ... | jq`` works; progress and data statistics go to stderr. A mistake in the
    arguments, the data or a setting is one line on stderr and exit status 2 (``--debug`` shows
    the traceback instead)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            if argv and argv[0] in PASS_THROUGH:  # their own parsers handle every option, --help included
                PASS_THROUGH[argv[0]](argparse.Namespace(rest=argv[1:]))
                return
            args = parser.parse_args(argv)
            answer = args.func(args)
    except USER_ERRORS as err:
        if debug:
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"tbpr {argv[0] if argv else ''}: error: {message} (--debug shows where)", file=sys.stderr)
        raise SystemExit(2) from None
    if answer is not None:
        print(answer)


PASS_THROUGH = {"synth": cmd_synth, "bench": cmd_bench}
# what a user can cause and fix: the message says what and how; anything else is a bug to report
USER_ERRORS = (ValueError, KeyError, TypeError, FileNotFoundError, FileExistsError, NotADirectoryError,
               DatasetError)


if __name__ == "__main__":
    main(sys.argv[1:])
