"""``compresslab list | build | report | compare | merge | init``.

Exit status: 0 ok, 1 a regression (compare), 2 bad input, told in one line on stderr:
``compresslab <command>: <message>``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from compresslab import __version__

EXIT_OK, EXIT_REGRESSION, EXIT_BAD_INPUT = 0, 1, 2


def _available(check) -> str:
    try:
        check()
    except Exception as err:  # noqa: BLE001 - any failure here is reported as the reason, not raised
        return f"no: {err}"
    return "yes"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _floors_path(given: str | None) -> Path:
    """An explicit --floors FILE must exist; without it, floors.toml here, else compresslab's defaults."""
    if given is None:
        from compresslab.floors import DEFAULT_FLOORS

        return Path("floors.toml") if Path("floors.toml").is_file() else DEFAULT_FLOORS
    if not Path(given).is_file():
        raise ValueError(f"--floors {given}: {'a directory, not a file' if Path(given).is_dir() else 'no such file'}")
    return Path(given)


def _catalog(args: argparse.Namespace):
    """The catalog here: the project's config in this directory (or --config FILE) over the registry."""
    from compresslab import project

    return project.load_catalog(Path.cwd(), Path(args.config) if args.config else None)


def cmd_list(args: argparse.Namespace) -> int:
    floors_path = _floors_path(args.floors)  # before the seconds of importing the registry
    from compresslab import floors

    catalog = _catalog(args)
    # a malformed floors file fails before the listing, not after a screen of it
    book = floors.load_layers(floors_path, catalog.floors, catalog.floors_source, catalog.models, catalog.methods)
    print(f"catalog: {catalog.source}")
    print("models:")
    for model_id, spec in catalog.models.items():
        def check(spec=spec):
            spec.source.check_available()
            for task in catalog.model_tasks(spec):
                task.check_available()
        status = _available(check) if args.check else "-"
        print(f"  {model_id:<20} {spec.kind:<10} tasks={','.join(spec.tasks):<40} available={status}")
        print(f"  {'':<20} {spec.description}")
    print("methods:")
    methods = catalog.methods
    id_width = max(map(len, methods))
    family_width = max(len(m.family) for m in methods.values())
    package_width = max(len(",".join(m.requires_packages) or "-") for m in methods.values())
    for method_id, method in methods.items():
        packages = ",".join(method.requires_packages) or "-"
        # available here: its packages are installed and it runs on this CPU for a model kind it supports
        status = _available(lambda m=method: m.check_supported(m.kinds[0], "cpu"))
        print(f"  {method_id:<{id_width}} family={method.family:<{family_width}} packages={packages:<{package_width}} "
              f"kinds={','.join(method.kinds):<21} devices={','.join(method.devices):<9} cpu-here={status}")
    family_of = catalog.family_of()
    print_cases(catalog, book, family_of)
    print(f"floors ({book.source}):")
    for model_id, chains in catalog.matrix.items():
        for chain in chains:
            print(f"  {model_id}-{chain}: {book.floor_for(model_id, chain, family_of).as_dict() or '-'}")
    return EXIT_OK


def print_cases(catalog, book, family_of: dict[str, str]) -> None:
    """Each case of the matrix with its tier (--compresslab-tier) and how long building it from an
    empty cache took in the newest saved run here that built or measured it."""
    from compresslab import matrix, runs

    measured = runs.last_build_times(Path(runs.RESULTS_DIR) / "runs")
    tiers = "tier: smoke within default within full" if catalog.tiered else "the project's matrix runs as listed"
    print(f"cases ({tiers}; build: the case's stages + its model's base stage, "
          "from an empty cache, in the last run here that measured it):")
    width = max(len(f"{m}-{c}") for m, chains in catalog.matrix.items() for c in chains)
    for model_id, chains in catalog.matrix.items():
        for chain in chains:
            known_bad = bool(book.floor_for(model_id, chain, family_of).expected_failure)
            build = measured.get((model_id, chain))
            shown = (f"{build[0]:7.1f}s + base {build[1]:6.1f}s  ({build[2]})" if build
                     else "      -  (not measured here)")
            tier = matrix.tier_of(model_id, chain, known_bad) if catalog.tiered else "listed"
            print(f"  {f'{model_id}-{chain}':<{width}}  {tier:<7}  {shown}")


def cmd_build(args: argparse.Namespace) -> int:
    from compresslab import cache, device, remote_cache
    from compresslab.pipeline import Pipeline
    from compresslab.session import default_cache_dir

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cache_dir = Path(args.cache_dir or default_cache_dir())
    cache.check_usable(cache_dir)  # a file or a read-only dir: one line now, not a traceback after the model work
    remote_url = remote_cache.configured(args.remote_cache)  # a bad URL: one line now too
    resolved = device.resolve(args.device)
    device.pin_threads(device.available_cpus() if args.threads is None else args.threads)
    catalog = _catalog(args)
    spec = catalog.get_model(args.model)
    spec.source.check_available()
    remote = remote_cache.RemoteCache(remote_url) if remote_url else None
    pipeline = Pipeline(cache.ArtifactCache(cache_dir, remote=remote), catalog.methods, rebuild=args.rebuild,
                        tasks=catalog.tasks)
    artifact = pipeline.build(spec, args.method, resolved)
    for stage in artifact.stages:
        state = "built" if stage.built_now else "cached"
        print(f"{stage.name:<16} {state:<7} {stage.build_s:8.1f}s  {stage.key}")
    print(artifact.path)
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from compresslab import report, report_html, runs

    run = runs.load(args.run)
    records = list(run.records.values())
    written = report_html.write(records, Path(args.out), run.describe())
    if args.format == "markdown":
        print(report_html.render_markdown(records, run.describe()))
    else:
        print(report.render_table(records))
        print(f"wrote {written.markdown}, {written.html} and {len(written.plots)} plot(s) in {args.out}")
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    from compresslab import compare, runs

    if not 0 < args.alpha < 1:
        raise ValueError(f"--alpha {args.alpha:g}: a significance level lies between 0 and 1")
    base, head = runs.load(args.base), runs.load(args.head)
    rules = compare.parse_rules(args.fail, compare.valid_fields(base, head))
    history = runs.load_history(args.history)
    result = compare.compare(base, head, rules, alpha=args.alpha, allow_missing=args.allow_missing, history=history)
    print(compare.render(result))
    return EXIT_REGRESSION if result.regressions else EXIT_OK


def cmd_merge(args: argparse.Namespace) -> int:
    from compresslab import merge

    document, merged = merge.merge(args.runs)
    path = merge.write(document, merged[0].kind, args.out)
    shards = [entry["shard"] for entry in document.get("merged_from") or document["compresslab"]["merged_from"]]
    named = f" (shards {', '.join(shards)})" if all(shards) else ""
    print(f"merged {len(merged)} runs{named}, {sum(len(run.records) for run in merged)} cases: {path}")
    return EXIT_OK


def cmd_init(args: argparse.Namespace) -> int:
    from compresslab import project_init

    print(project_init.init(args.source, Path(args.out), args.id, args.kind, args.force).summary())
    return EXIT_OK


class OneLineParser(argparse.ArgumentParser):
    """Bad arguments are one line and exit 2, like every other bad input (argparse would print the
    whole usage first); --help still shows the usage."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="compresslab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"compresslab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="models, methods (with availability here) and their floors")
    config_help = "the project's config (default: compresslab.toml or pyproject.toml [tool.compresslab] here)"
    listing.add_argument("--floors", metavar="FILE",
                         help="the floors file to list (default: floors.toml here, else compresslab's defaults)")
    listing.add_argument("--config", metavar="FILE", help=config_help)
    listing.add_argument("--check", action="store_true", help="also check each model's weights and data")
    listing.set_defaults(func=cmd_list)
    build = sub.add_parser("build", help="build (or find in the cache) one model x method chain")
    build.add_argument("model")
    build.add_argument("method", help="a method id or a chain such as bf16+int8-weight")
    build.add_argument("--cache-dir")
    build.add_argument("--remote-cache", metavar="URL",
                       help="a remote artifact cache (s3://, gs://, az://, file:// or a path; default: "
                            "$COMPRESSLAB_REMOTE_CACHE)")
    build.add_argument("--device", default="auto")
    build.add_argument("--threads", type=_positive_int, help="intra-op threads (default: all CPUs available)")
    build.add_argument("--rebuild", action="store_true")
    build.add_argument("--config", metavar="FILE", help=config_help)
    build.set_defaults(func=cmd_build)
    run_help = ("a saved run: a sidecar or pytest-benchmark JSON file, a pytest-benchmark run number (0003), "
                "or a glob of a commit id matched in .benchmarks/ and .compresslab/runs/ (the newest wins)")
    rep = sub.add_parser("report", help="print a run's table; write Markdown, HTML and Pareto plots")
    rep.add_argument("run", nargs="?", default=".compresslab/latest.json", help=run_help)
    rep.add_argument("--out", default=".compresslab/report", help="where report.md, report.html and the PNGs go")
    rep.add_argument("--format", choices=("text", "markdown"), default="text",
                     help="what to print: the fixed-width table, or Markdown (for a CI job summary)")
    rep.set_defaults(func=cmd_report)
    cmp = sub.add_parser("compare", help="compare two runs; exit 1 on a regression by the --fail rules",
                         description="exit status: 0 no regression, 1 regression, 2 bad input")
    cmp.add_argument("base", help=run_help)
    cmp.add_argument("head", help="the run to judge against base (same forms)")
    cmp.add_argument("--fail", action="append", default=[], metavar="RULE",
                     help="FIELD:+N%% or FIELD:-Npt (points of a 0..1 metric), e.g. size:+1%% latency:+10%% "
                          "accuracy:-0.5pt perplexity:+2%%; the sign is the bad direction; repeat or comma-separate")
    cmp.add_argument("--alpha", type=float, default=0.05,
                     help="significance level of the latency test (one-sided Mann-Whitney U; default 0.05)")
    cmp.add_argument("--allow-missing", action="store_true",
                     help="a case that passed in base and is skipped or absent in head is no regression "
                          "(one that fails or errors still is)")
    cmp.add_argument("--history", action="append", default=[], metavar="GLOB",
                     help="earlier runs of the same cases, e.g. '.compresslab/runs/*.json': a latency, b16 or decode "
                          "rule's threshold becomes at least the largest change of that case between two of them "
                          "(base included, head ignored; 3 runs needed); repeatable")
    cmp.set_defaults(func=cmd_compare)
    mrg = sub.add_parser("merge", help="join the runs of shards (--compresslab-shard I/N) into one run",
                         description="exit status: 0 merged, 2 runs of different commits or settings, a shard "
                                     "missing or given twice, a case in two runs")
    mrg.add_argument("runs", nargs="+", metavar="RUN", help="every shard's run (sidecars, or pytest-benchmark JSON); "
                                                             "same forms as compare")
    mrg.add_argument("-o", "--out", help="the merged run's file (default for sidecars: .compresslab/runs/"
                                         "<time>_<commit>_merged.json and .compresslab/latest.json)")
    mrg.set_defaults(func=cmd_merge)
    init = sub.add_parser("init", help="write a commented starter compresslab.toml for your own checkpoint")
    init.add_argument("source", help="a local checkpoint directory (config.json + weights), a .gguf file or a hub id "
                                     "(read from the local Hugging Face cache only)")
    init.add_argument("--id", help="the model's id (default: the checkpoint's name, lowercased)")
    init.add_argument("--kind", choices=("classifier", "multilabel-classifier", "causal-lm"),
                      help="required when config.json cannot tell (a hub id not in the local cache)")
    init.add_argument("--out", default="compresslab.toml", help="the file to write (default: compresslab.toml here)")
    init.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    init.set_defaults(func=cmd_init)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from compresslab.device import DeviceError
    from compresslab.floors import FloorsError
    from compresslab.errors import Unavailable

    try:
        return args.func(args)
    except (KeyError, ValueError, OSError, FloorsError, DeviceError, Unavailable) as err:
        # one line: a CI log shows it whole, and no traceback reads as a crash (exit 1, "regression")
        message = " ".join(str(_message(err)).splitlines())
        print(f"compresslab {args.command}: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _message(err: Exception) -> object:
    if isinstance(err, KeyError) and err.args:
        return err.args[0]
    if isinstance(err, OSError) and err.strerror:  # not "[Errno 20] Not a directory: '<path>'"
        return f"{err.filename}: {err.strerror}" if err.filename else err.strerror
    return err


if __name__ == "__main__":
    sys.exit(main())
