"""``compresslab list | build | report``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

EXIT_OK, EXIT_BAD_INPUT = 0, 2


def _available(check) -> str:
    try:
        check()
    except Exception as err:  # noqa: BLE001 - any failure here is reported as the reason, not raised
        return f"no: {err}"
    return "yes"


def cmd_list(args: argparse.Namespace) -> int:
    from compresslab import floors, registry

    print("models:")
    for model_id, spec in registry.MODELS.items():
        def check(spec=spec):
            spec.source.check_available()
            for task in spec.tasks:
                registry.TASKS[task].check_available()
        status = _available(check) if args.check else "-"
        print(f"  {model_id:<20} {spec.kind:<10} tasks={','.join(spec.tasks):<40} available={status}")
        print(f"  {'':<20} {spec.description}")
    print("methods:")
    id_width = max(map(len, registry.METHODS))
    family_width = max(len(m.family) for m in registry.METHODS.values())
    package_width = max(len(",".join(m.requires_packages) or "-") for m in registry.METHODS.values())
    for method_id, method in registry.METHODS.items():
        packages = ",".join(method.requires_packages) or "-"
        # available here: its packages are installed and it runs on this CPU for a model kind it supports
        status = _available(lambda m=method: m.check_supported(m.kinds[0], "cpu"))
        print(f"  {method_id:<{id_width}} family={method.family:<{family_width}} packages={packages:<{package_width}} "
              f"kinds={','.join(method.kinds):<21} devices={','.join(method.devices):<9} cpu-here={status}")
    floors_path = Path(args.floors)
    if floors_path.is_file():
        book = floors.load(floors_path, registry.MODELS, registry.METHODS)
        family_of = {name: m.family for name, m in registry.METHODS.items()}
        print(f"floors ({floors_path}):")
        for model_id, chains in registry.DEFAULT_MATRIX.items():
            for chain in chains:
                print(f"  {model_id}-{chain}: {book.floor_for(model_id, chain, family_of).as_dict() or '-'}")
    return EXIT_OK


def cmd_build(args: argparse.Namespace) -> int:
    from compresslab import device, registry
    from compresslab.cache import ArtifactCache
    from compresslab.pipeline import Pipeline
    from compresslab.plugin import default_cache_dir

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    resolved = device.resolve(args.device)
    device.pin_threads(args.threads or device.available_cpus())
    spec = registry.get_model(args.model)
    spec.source.check_available()
    pipeline = Pipeline(ArtifactCache(Path(args.cache_dir or default_cache_dir())), registry.METHODS,
                        rebuild=args.rebuild, tasks=registry.TASKS)
    artifact = pipeline.build(spec, args.method, resolved)
    for stage in artifact.stages:
        state = "built" if stage.built_now else "cached"
        print(f"{stage.name:<16} {state:<7} {stage.build_s:8.1f}s  {stage.key}")
    print(artifact.path)
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from compresslab import report, results

    run = results.load(Path(args.run))
    records = [b for b in run["benchmarks"] if "model" in b or "extra_info" in b]
    for record in records:  # pytest-benchmark JSON keeps compresslab's fields in extra_info
        record.setdefault("model", record.get("extra_info", {}).get("model", "?"))
        record.setdefault("method", record.get("extra_info", {}).get("method", "?"))
        record.setdefault("outcome", "passed")
    print(report.render_table(records))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="compresslab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="models, methods (with availability here) and their floors")
    listing.add_argument("--floors", default="floors.toml")
    listing.add_argument("--check", action="store_true", help="also check each model's weights and data")
    listing.set_defaults(func=cmd_list)
    build = sub.add_parser("build", help="build (or find in the cache) one model x method chain")
    build.add_argument("model")
    build.add_argument("method", help="a method id or a chain such as bf16+int8-weight")
    build.add_argument("--cache-dir")
    build.add_argument("--device", default="auto")
    build.add_argument("--threads", type=int)
    build.add_argument("--rebuild", action="store_true")
    build.set_defaults(func=cmd_build)
    rep = sub.add_parser("report", help="print the results table of a run")
    rep.add_argument("run", nargs="?", default=".compresslab/latest.json",
                     help="sidecar or pytest-benchmark JSON (default: .compresslab/latest.json)")
    rep.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from compresslab.device import DeviceError
    from compresslab.floors import FloorsError
    from compresslab.models.spec import ModelUnavailable

    try:
        return args.func(args)
    except (KeyError, ValueError, FileNotFoundError, FloorsError, DeviceError, ModelUnavailable) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"compresslab {args.command}: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
