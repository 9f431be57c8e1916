"""The pytest plugin: options, the ``compressed`` fixture, extra_info, the sidecar results JSON.

Loaded through the ``pytest11`` entry point in every pytest run of an environment where
compresslab is installed, so this module imports only pytest and the standard library at
import time; torch and friends load when a compresslab fixture is first used.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

log = logging.getLogger("compresslab")

DEFAULT_ROUNDS = 30
DEFAULT_WARMUP = 5
RECORDS_KEY = "compresslab_records"
RUN_ID_KEY = "compresslab_run_id"
TIERS = ("smoke", "default", "full")  # nested, smallest first (matrix.tier_of says which holds a case)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("compresslab", "compresslab: compression benchmarks")
    group.addoption("--compresslab-cache-dir", default=None,
                    help="artifact cache (default: $COMPRESSLAB_CACHE_DIR or the user cache dir)")
    group.addoption("--compresslab-rebuild", action="store_true", help="rebuild every artifact the run uses")
    group.addoption("--compresslab-floors", default=None, help="floors file (default: floors.toml in rootdir)")
    group.addoption("--compresslab-results-dir", default=".compresslab",
                    help="where the sidecar results JSON goes (default: .compresslab)")
    group.addoption("--compresslab-device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    group.addoption("--compresslab-threads", type=int, default=None,
                    help="intra-op threads for every runtime (default: all CPUs available to the process)")
    group.addoption("--compresslab-rounds", type=int, default=DEFAULT_ROUNDS, help="timed rounds per case")
    group.addoption("--compresslab-warmup", type=int, default=DEFAULT_WARMUP, help="warm-up rounds per case")
    group.addoption("--compresslab-memory", choices=("subprocess", "off"), default="subprocess",
                    help="peak-memory pass: a fresh process per artifact (default) or off")
    group.addoption("--compresslab-reeval", action="store_true",
                    help="re-measure task metrics even when this artifact's evaluation is cached")
    group.addoption("--compresslab-baseline", default=None, metavar="RUN",
                    help="gate this run against a saved run (file, run number or commit glob, as in "
                         "`compresslab compare`): a regression by --compresslab-fail fails the session")
    group.addoption("--compresslab-fail", action="append", default=[], metavar="RULE",
                    help="regression rule for --compresslab-baseline, e.g. size:+1%% latency:+10%% accuracy:-0.5pt; "
                         "repeat or comma-separate")
    group.addoption("--compresslab-tier", choices=TIERS, default=None,
                    help="which cases of the registry's matrix run: smoke (CI on every pull request), default "
                         "(the Pareto-relevant rows; the default without COMPRESSLAB_MATRIX) or full (every row, "
                         "the slow and the known-bad included; the default with COMPRESSLAB_MATRIX)")
    group.addoption("--compresslab-allow-missing", action="store_true",
                    help="with --compresslab-baseline: a collected case that passed in the baseline and is skipped "
                         "now is no regression (one that fails or errors still is)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "compresslab(model, method): a compression case")
    config.addinivalue_line("markers", "smoke: a case of the smoke tier (what CI runs on every pull request)")
    config.addinivalue_line("markers", "slow: a case of the full tier only (slow to build, or a known failure)")
    config.addinivalue_line("markers", "compresslab_tiered: a case of the registry's matrix, which --compresslab-tier "
                                       "(default: default) selects from")
    config._compresslab_records = []  # type: ignore[attr-defined]
    is_worker = hasattr(config, "workerinput")
    config._compresslab_gate = None if is_worker else gate_settings(config)
    check_matrix_env()
    config._compresslab_run_id = config.workerinput[RUN_ID_KEY] if is_worker else new_run_id()
    if not is_worker:
        show_warnings_live(config)
        stop_cleanly_on_sigterm(config)


def stop_cleanly_on_sigterm(config: pytest.Config) -> None:
    """A CI time limit or a cancelled job sends SIGTERM: stop as on Ctrl-C, so the session end still
    writes the cases that finished (a sidecar marked incomplete) instead of dying without a record."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return  # not ours to take over (another handler, or not the main thread)

    def interrupt(signum, frame):
        config._compresslab_signal = "SIGTERM"
        raise KeyboardInterrupt("SIGTERM")

    signal.signal(signal.SIGTERM, interrupt)
    config.add_cleanup(lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))


def check_matrix_env() -> None:
    """A bad COMPRESSLAB_MATRIX is one usage-error line before collection, not a collection error."""
    from compresslab.matrix import ENV

    if os.environ.get(ENV):
        from compresslab import matrix

        try:
            matrix.selected_matrix()
        except (KeyError, ValueError) as err:
            raise pytest.UsageError(err.args[0] if isinstance(err, KeyError) else str(err)) from None


def new_run_id() -> str:
    import time
    import uuid

    return f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """xdist controller: every worker appends to this run's journal under the same run id."""
    node.workerinput[RUN_ID_KEY] = node.config._compresslab_run_id


class LiveWarnings(logging.Handler):
    """compresslab's warnings (a corrupt cache entry moved aside, a slow lock) on the terminal as
    they happen, not only under --log-cli-level: they explain a rebuild the user is waiting for."""

    def __init__(self, level: int = logging.WARNING) -> None:
        super().__init__(level=level)
        self.setFormatter(logging.Formatter("compresslab: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        import sys

        # sys.__stderr__: pytest's capture swaps sys.stderr; builds run with capture suspended
        print(self.format(record), file=sys.__stderr__, flush=True)


def show_warnings_live(config: pytest.Config) -> None:
    """Warnings, and the progress lines of builds and evaluations (one as each starts and ends)."""
    if config.getoption("log_cli_level", None) or config.getini("log_cli"):
        return  # pytest's live log already shows them
    for name, level in (("compresslab", logging.WARNING), ("compresslab.progress", logging.INFO)):
        logger, handler = logging.getLogger(name), LiveWarnings(level)
        logger.addHandler(handler)
        config.add_cleanup(lambda logger=logger, handler=handler: logger.removeHandler(handler))
    progress = logging.getLogger("compresslab.progress")
    progress.setLevel(logging.INFO)
    progress.propagate = False  # its lines are shown here once, not again by the warnings handler
    config.add_cleanup(lambda: (progress.setLevel(logging.NOTSET), setattr(progress, "propagate", True)))


@dataclass(frozen=True)
class Gate:
    baseline: Any  # runs.Run
    rules: list
    allow_missing: bool = False


def gate_settings(config: pytest.Config) -> Gate | None:
    """Load the baseline and parse the rules up front: a typo, a repeated rule or a latency rule
    that too few rounds could never fire fails in a second, not after the run."""
    spec, rules = config.getoption("--compresslab-baseline"), config.getoption("--compresslab-fail")
    if spec is None:
        if rules:
            raise pytest.UsageError("--compresslab-fail needs --compresslab-baseline=RUN to compare against")
        return None
    from compresslab import compare, runs

    try:
        baseline = runs.load(spec, Path(config.rootpath))
        parsed = compare.parse_rules(rules, compare.valid_fields(baseline))
    except ValueError as err:  # RunError, RuleError
        raise pytest.UsageError(f"--compresslab-baseline/--compresslab-fail: {err}") from None
    # the run still has its rounds to choose, unlike `compresslab compare` on saved runs: refuse
    powerless = compare.powerless_rounds(parsed, baseline, config.getoption("--compresslab-rounds"))
    if powerless:
        raise pytest.UsageError(f"--compresslab-fail: {powerless}")
    return Gate(baseline, parsed, config.getoption("--compresslab-allow-missing"))


@dataclass
class Settings:
    cache_dir: Path
    rebuild: bool
    results_dir: Path
    device: str
    threads: int
    rounds: int
    warmup: int
    memory: str
    reeval: bool

    @classmethod
    def from_config(cls, config: pytest.Config) -> Settings:
        from compresslab import device

        option = config.getoption
        return cls(
            cache_dir=Path(option("--compresslab-cache-dir") or default_cache_dir()).expanduser(),
            rebuild=option("--compresslab-rebuild"),
            results_dir=results_dir(config),
            device=device.resolve(option("--compresslab-device"), os.environ.get("PYTEST_XDIST_WORKER")),
            threads=device.available_cpus() if option("--compresslab-threads") is None
            else option("--compresslab-threads"),
            rounds=option("--compresslab-rounds"),
            warmup=option("--compresslab-warmup"),
            memory=option("--compresslab-memory"),
            reeval=option("--compresslab-reeval") or option("--compresslab-rebuild"),
        )


def default_cache_dir() -> Path:
    if os.environ.get("COMPRESSLAB_CACHE_DIR"):
        return Path(os.environ["COMPRESSLAB_CACHE_DIR"])
    import platformdirs

    return Path(platformdirs.user_cache_dir("compresslab"))


class Suite:
    """Per-session state: settings, cache, pipeline, floors, and each model's baseline."""

    def __init__(self, config: pytest.Config):
        from compresslab import device, registry
        from compresslab.cache import ArtifactCache
        from compresslab.cases import CaseRunner
        from compresslab.methods.gptq import cpu_workers_default
        from compresslab.pipeline import Pipeline

        self.settings = run_settings(config)
        device.pin_threads(self.settings.threads)
        cpu_workers_default(self.settings.threads)
        self.registry, self.config = registry, config
        self.floors = floor_book(config)
        pipeline = Pipeline(ArtifactCache(self.settings.cache_dir), registry.METHODS, rebuild=self.settings.rebuild,
                            tasks=registry.TASKS)
        self.cases = CaseRunner(pipeline, registry.TASKS, self.settings.device, self.settings.threads,
                                memory=self.settings.memory, reeval=self.settings.reeval)
        self._baseline_workload: dict[str, Any] = {}

    def floor_for(self, spec, chain_id: str) -> Any:
        return case_floor(self.config, spec.id, chain_id)

    def baseline_block(self, spec, baseline) -> Any:
        """One block of fp32 rounds, back to back, with its own warm-up (another runtime has just
        had the cores): half a case's rounds, so the blocks before and after one case hold as
        many rounds as the case."""
        from compresslab.trackers import latency

        inputs = self.cases.timed_inputs(spec, baseline.runner)
        return latency.time_calls(lambda: baseline.runner.logits(inputs), self.settings.device,
                               rounds=max(3, self.settings.rounds // 2), warmup=self.settings.warmup)

    def second_workload(self, spec, runner) -> Any:
        from compresslab.trackers.workloads import second_workload

        task = self.registry.TASKS[spec.tasks[0]]
        settings = self.settings
        return second_workload(runner, lambda n: task.latency_inputs(runner.tokenizer, spec.latency_seq_len, n),
                               settings.device, settings.rounds, settings.warmup)

    def baseline_workload(self, spec, baseline) -> Any:
        if spec.id not in self._baseline_workload:
            self._baseline_workload[spec.id] = self.second_workload(spec, baseline.runner)
        return self._baseline_workload[spec.id]


def run_settings(config: pytest.Config) -> Settings:
    """The run's settings, checked once before anything builds: a bad device or count is one
    line and pytest's usage-error exit (4), not an error per case."""
    if not hasattr(config, "_compresslab_settings"):
        try:
            settings = Settings.from_config(config)
        except ValueError as err:  # DeviceError
            raise pytest.UsageError(str(err)) from None
        for name, least in (("threads", 1), ("rounds", 1), ("warmup", 0)):
            if getattr(settings, name) < least:
                raise pytest.UsageError(f"--compresslab-{name} must be >= {least}, got {getattr(settings, name)}")
        from compresslab.cache import CacheError, check_usable

        try:
            check_usable(settings.cache_dir)
        except CacheError as err:
            raise pytest.UsageError(str(err)) from None
        config._compresslab_settings = settings
    return config._compresslab_settings


def floor_book(config: pytest.Config) -> Any:
    """The run's floors, parsed once (collection marks known failures, cases check floors)."""
    if not hasattr(config, "_compresslab_floors"):
        from compresslab import floors, registry

        option, default = config.getoption("--compresslab-floors"), Path(config.rootpath) / "floors.toml"
        path = Path(option) if option else default if default.is_file() else None
        try:
            config._compresslab_floors = (floors.load(path, registry.MODELS, registry.METHODS) if path
                                          else floors.FloorBook({}, {}, {}))
        except floors.FloorsError as err:
            raise pytest.UsageError(str(err)) from None
    return config._compresslab_floors


def case_floor(config: pytest.Config, model_id: str, chain_id: str) -> Any:
    from compresslab import registry

    family_of = {name: method.family for name, method in registry.METHODS.items()}
    return floor_book(config).floor_for(model_id, chain_id, family_of)


@pytest.hookimpl(tryfirst=True)  # before -m and -k: the tier markers below must be there when they select
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Each case gets its tier's marker (``smoke``; ``slow`` for the full tier only) and the run keeps
    the cases of its tier. A combination known to fall below its floors runs as an expected failure:
    XFAIL only when it is below its floors (a crash is still an error), XPASS when it meets them."""
    cases = [(item, _case_param(item)) for item in items]
    cases = [(item, case) for item, case in cases if case is not None]
    if not cases:  # a project's own tests: no compresslab import on their collection
        return
    from compresslab.floors import BelowFloors

    run_settings(config)
    # the registry's matrix (marked compresslab_tiered) runs the default tier unless told otherwise;
    # a case list given by COMPRESSLAB_MATRIX or a project's own parametrization runs as listed
    explicit_tier = config.getoption("--compresslab-tier")
    run_tier = explicit_tier or "default"
    outside = []
    for item, (model_id, chain_id) in cases:
        floor = case_floor(config, model_id, chain_id)
        tier = case_tier(model_id, chain_id, known_bad=bool(floor.expected_failure))
        if tier != "default":
            item.add_marker("smoke" if tier == "smoke" else "slow")
        if floor.expected_failure:
            item.add_marker(pytest.mark.xfail(reason=floor.expected_failure, raises=BelowFloors, strict=False))
        if (explicit_tier or item.get_closest_marker("compresslab_tiered")) and not in_tier(tier, run_tier):
            outside.append(item)
    if outside:
        config.hook.pytest_deselected(items=outside)
        deselected = set(outside)
        items[:] = [item for item in items if item not in deselected]
    config._compresslab_tier_counts = (run_tier, len(cases) - len(outside), len(cases))


def case_tier(model_id: str, chain_id: str, known_bad: bool) -> str:
    from compresslab import matrix, registry

    if model_id not in registry.MODELS:
        return "full"
    return matrix.tier_of(model_id, chain_id, known_bad)


def in_tier(case: str, run: str) -> bool:
    return TIERS.index(case) <= TIERS.index(run)


def pytest_report_collectionfinish(config: pytest.Config, start_path, items) -> str | None:
    counts = getattr(config, "_compresslab_tier_counts", None)
    if not counts or counts[1] == counts[2]:
        return None
    tier, kept, total = counts
    return (f"compresslab: tier {tier}: {kept} of {total} cases "
            f"(--compresslab-tier full for every row; `compresslab list` shows each case's tier)")


def _case_param(item: pytest.Item) -> tuple[str, str] | None:
    callspec = getattr(item, "callspec", None)
    value = callspec.params.get("compressed") if callspec else None
    return value if isinstance(value, tuple) and len(value) == 2 else None


@pytest.fixture(scope="session")
def compresslab_suite(request: pytest.FixtureRequest) -> Suite:
    from compresslab.floors import FloorsError

    try:
        return Suite(request.config)
    except (FloorsError, ValueError) as err:
        raise pytest.UsageError(str(err)) from None


@dataclass
class Case:
    """A built, evaluated compression case; the benchmark times it and checks its floors."""

    suite: Suite
    spec: Any
    chain_id: str
    measurement: Any
    baseline: Any
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.spec.id}-{self.chain_id}"

    @property
    def is_baseline(self) -> bool:
        return self.chain_id == self.suite.registry.BASELINE_METHOD

    def time(self, benchmark) -> None:
        """Time one fixed-shape inference with pytest-benchmark, bracketed by fp32 blocks (A B A).

        The speedup divides the fp32 rounds timed just before and just after this case by the
        case's own: a machine that slows down during a run slows both sides of the ratio, which
        fp32 timed once at the start of a model would not. Blocks, not alternating rounds:
        runtimes taking turns round by round slow each other (an OpenVINO int8 IR measured
        0.90 ms back to back and 2.65 ms alternating with eager PyTorch rounds)."""
        from compresslab.trackers import latency

        runner, settings = self.measurement.runner, self.suite.settings
        inputs = self.suite.cases.timed_inputs(self.spec, runner)
        sync = latency.synchronizer(settings.device)
        benchmark.extra_info.update(self.extra)  # recorded even when the timing below fails

        def infer():
            runner.logits(inputs)
            sync()

        timing = not getattr(benchmark, "disabled", False)
        before = self.suite.baseline_block(self.spec, self.baseline) if timing and not self.is_baseline else None
        benchmark.pedantic(infer, rounds=settings.rounds, warmup_rounds=settings.warmup, iterations=1)
        if benchmark.stats is not None and timing:
            stats = latency.LatencyStats(tuple(benchmark.stats.stats.data))
            self.extra.update(stats.as_ms())
            # the raw rounds, so `compresslab compare` can test a latency change statistically
            self.extra["latency_samples_ms"] = [round(1e3 * s, 6) for s in stats.samples_s]
            self.extra.update(self.speedup(stats, before))
            self.time_second_workload()  # only where timing is on (not under xdist or --benchmark-disable)
        self.extra["latency_input_shape"] = list(inputs["input_ids"].shape)
        benchmark.extra_info.update(self.extra)

    def speedup(self, stats, before) -> dict[str, Any]:
        """fp32 at the case's midpoint (the mean of the medians of the blocks before and after:
        exact under a linear drift) over the case's median; the baseline's speedup is 1 by
        definition, on its own rounds."""
        if before is None:
            return {"baseline_latency_p50_ms": 1e3 * stats.median_s, "speedup_vs_baseline": 1.0}
        after = self.suite.baseline_block(self.spec, self.baseline)
        fp32_s = (before.median_s + after.median_s) / 2
        return {"baseline_latency_p50_ms": 1e3 * fp32_s,
                "speedup_vs_baseline": fp32_s / stats.median_s,
                # how far fp32 moved while this case ran: large values flag a machine under changing load
                "baseline_drift": after.median_s / before.median_s - 1}

    def time_second_workload(self) -> None:
        """Batch 16 (classifier) or per-token decode (causal LM), against this run's fp32 on the same."""
        result = self.suite.second_workload(self.spec, self.measurement.runner)
        if self.is_baseline:
            self.suite._baseline_workload.setdefault(self.spec.id, result)
        base = self.suite.baseline_workload(self.spec, self.baseline)
        self.extra.update(result.extra)
        self.extra[result.speedup_key] = base.median_s / result.median_s

    def expected_metrics(self) -> dict[str, str]:
        """{metric: task id} of every metric this model's tasks must produce."""
        return {metric: task_id for task_id in self.spec.tasks
                for metric in self.suite.registry.TASKS[task_id].metrics}

    def check_floors(self) -> None:
        """Missing or non-finite metrics and broken floors fail the case (BelowFloors, which a
        known failure's xfail marker expects); a known failure that got worse than its reference
        values fails outright."""
        from compresslab import floors

        floor = self.suite.floor_for(self.spec, self.chain_id)
        metrics = self.measurement.metrics
        violations = [*floors.check_present(metrics, self.expected_metrics()),
                      *floors.check(floor, metrics, self.baseline.metrics, self.extra.get("size_bytes", 0) / 1e6,
                                   self.extra.get("baseline_size_bytes", 0) / 1e6)]
        worse = floors.check_reference(floor, metrics)
        self.extra["floors"] = floor.as_dict()
        self.extra["floor_violations"] = [v.message for v in [*violations, *worse]]
        if worse or violations:
            raise (pytest.fail.Exception if worse else floors.BelowFloors)(self.floor_message(worse or violations),
                                                                          pytrace=False)

    def floor_message(self, violations: list) -> str:
        lines = "\n".join(f"  - {v.message}" for v in violations)
        return (f"{self.id} is below its floors ({self.suite.floors.source}):\n{lines}\n"
                f"  measured: {_fmt(self.measurement.metrics)}\n  baseline: {_fmt(self.baseline.metrics)}")


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))


def case_params(matrix: dict[str, tuple[str, ...]], tiered: bool = False) -> list:
    """pytest params with ids ``<model>-<method>`` so ``-k "smollm2 and int8"`` selects as expected.
    ``tiered``: the run's tier (--compresslab-tier) deselects the cases outside it; otherwise the
    list runs as given unless --compresslab-tier is set."""
    marks = (pytest.mark.compresslab_tiered,) if tiered else ()
    return [pytest.param((model_id, chain_id), id=f"{model_id}-{chain_id}", marks=marks)
            for model_id, chains in matrix.items() for chain_id in chains]


@pytest.fixture
def compressed(request: pytest.FixtureRequest, compresslab_suite: Suite):
    """Indirect fixture: param ``(model_id, chain_id)``; builds (cached), evaluates, yields a Case."""
    from compresslab.errors import MethodUnsupported, Unavailable

    model_id, chain_id = request.param
    suite = compresslab_suite
    spec = suite.registry.get_model(model_id)
    request.node._compresslab_case_id = (model_id, chain_id)
    try:
        suite.cases.check_available(spec)
        with live_output(request.config):
            baseline = suite.cases.baseline(spec, suite.registry.BASELINE_METHOD)
            is_baseline = chain_id == suite.registry.BASELINE_METHOD
            measurement = baseline if is_baseline else suite.cases.run(spec, chain_id)
    except (Unavailable, MethodUnsupported) as err:
        pytest.skip(f"{model_id}-{chain_id}: {err}")
    case = Case(suite, spec, chain_id, measurement, baseline)
    case.extra.update(run_info(suite))
    case.extra.update(measurement.info)
    case.extra.update(suite.cases.versus_baseline(measurement, baseline))
    case.extra["metrics"] = dict(measurement.metrics)
    request.node._compresslab_case = case
    yield case
    if not is_baseline:
        measurement.release()


@contextlib.contextmanager
def live_output(config: pytest.Config):
    """Builds and evaluations take minutes the first time: their progress bars go to the terminal,
    not into pytest's capture (shown only on failure). Cached cases print nothing."""
    capman = config.pluginmanager.getplugin("capturemanager")
    if capman is None:
        yield
        return
    with capman.global_and_fixture_disabled():
        yield


def run_info(suite: Suite) -> dict[str, Any]:
    from compresslab import __version__, device
    from compresslab.pipeline import library_versions

    return {
        "device": suite.settings.device,
        "device_name": device.describe(suite.settings.device),
        "threads": suite.settings.threads,
        "libraries": {"compresslab": __version__, **library_versions(
            ("torch", "transformers", "torchao", "onnxruntime", "openvino", "nncf", "pytest-benchmark"))},
    }


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    case_id = getattr(item, "_compresslab_case_id", None)
    if case_id is None or not _is_final(report):
        return
    case = getattr(item, "_compresslab_case", None)
    violations = case.extra.get("floor_violations") if case else None
    record = {
        "name": item.name,
        "fullname": item.nodeid,
        "model": case_id[0],
        "method": case_id[1],
        "outcome": _outcome(report),
        "reason": "; ".join(violations) if violations and not report.passed else _reason(report),
        **({"expected_failure": report.wasxfail} if hasattr(report, "wasxfail") else {}),
        "extra_info": dict(case.extra) if case else {},
    }
    item.config._compresslab_records.append(record)
    append_to_journal(item.config, record)
    benchmark = getattr(item, "funcargs", {}).get("benchmark")
    if benchmark is not None:  # pytest-benchmark's JSON then says how the case ended, floors included
        benchmark.extra_info.update(outcome=report.outcome, floor_violations=record["extra_info"].get(
            "floor_violations", []))


def _outcome(report: pytest.TestReport) -> str:
    """pytest's outcome, with a known failure told apart: xfailed (below its floors, as expected)
    and xpassed (it met them)."""
    if hasattr(report, "wasxfail"):
        return "xfailed" if report.skipped else "xpassed"
    return report.outcome


def _is_final(report: pytest.TestReport) -> bool:
    """The report that decides a test's outcome: the call, or a setup that skipped or failed."""
    return report.when == "call" or (report.when == "setup" and report.outcome != "passed")


def _reason(report: pytest.TestReport) -> str | None:
    if report.passed:
        return None
    if report.skipped and isinstance(report.longrepr, tuple):
        return report.longrepr[2].removeprefix("Skipped: ")
    return report.longreprtext.strip().splitlines()[-1] if report.longreprtext else None


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """xdist controller: gather each worker's records."""
    records = getattr(node, "workeroutput", {}).get(RECORDS_KEY, [])
    node.config._compresslab_records.extend(records)


def results_dir(config: pytest.Config) -> Path:
    path = Path(config.getoption("--compresslab-results-dir"))
    return path if path.is_absolute() else Path(config.rootpath) / path


def append_to_journal(config: pytest.Config, record: dict[str, Any]) -> None:
    """This process's append-only record of the cases it finished (results.py): one file per
    process of the run, so xdist workers never share one."""
    from compresslab import results

    process = os.environ.get("PYTEST_XDIST_WORKER", "main")
    results.append_to_journal(results.journal_path(results_dir(config), config._compresslab_run_id, process), record)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    records = config._compresslab_records
    if hasattr(config, "workerinput"):  # xdist worker: hand records to the controller
        config.workeroutput[RECORDS_KEY] = records
        return
    from compresslab import results

    out = results_dir(config)
    journals = results.run_journals(out, config._compresslab_run_id)
    records = with_journal_records(records, results.read_journal(journals))
    if not records:
        return
    incomplete = None
    if exitstatus == pytest.ExitCode.INTERRUPTED:
        incomplete = f"interrupted ({getattr(config, '_compresslab_signal', 'KeyboardInterrupt')})"
    config._compresslab_incomplete = incomplete
    document = results.sidecar_document(records, out, incomplete)
    config._compresslab_sidecar = results.write_sidecar(document, out)
    config._compresslab_document = results.as_json(document)  # the gate judges this run in memory
    results.drop_journals(journals)
    if config._compresslab_gate is not None:
        check_gate(session, config._compresslab_gate)


def with_journal_records(records: list[dict[str, Any]], journal: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """This session's records, plus those only a journal holds (an xdist worker that was stopped
    before it could hand its records over)."""
    names = {record["name"] for record in records}
    return [*records, *(record for record in journal if record.get("name") not in names)]


def check_gate(session: pytest.Session, gate: Gate) -> None:
    """Compare this run with the baseline; a regression turns a passing session into a failing one."""
    from compresslab import compare, runs

    head = runs.from_document(session.config._compresslab_document, session.config._compresslab_sidecar)
    baseline = collected_baseline(session, gate.baseline, head)
    try:
        session.config._compresslab_comparison = compare.compare(baseline, head, gate.rules,
                                                                 allow_missing=gate.allow_missing)
    except runs.RunError as err:
        session.config._compresslab_gate_error = str(err)
        session.exitstatus = pytest.ExitCode.USAGE_ERROR
        return
    if session.config._compresslab_comparison.regressions and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def collected_baseline(session: pytest.Session, baseline: Any, head: Any) -> Any:
    """The baseline's cases this session collected: one deselected by -k is not lost, while one
    collected that skipped or failed before recording anything is. (An xdist controller collects
    nothing itself: there the cases head recorded stand for the collected ones.)"""
    import dataclasses

    names = {item.name for item in session.items} | set(head.records)
    return dataclasses.replace(baseline, records={name: record for name, record in baseline.records.items()
                                                  if name in names})


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    records = getattr(config, "_compresslab_records", [])
    if hasattr(config, "workerinput") or not records:
        return
    from compresslab import report

    terminalreporter.write_sep("=", "compresslab results")
    for line in report.render_table(records).splitlines():
        terminalreporter.write_line(line)
    sidecar = getattr(config, "_compresslab_sidecar", None)
    if sidecar:
        terminalreporter.write_line(f"sidecar: {sidecar}")
    incomplete = getattr(config, "_compresslab_incomplete", None)
    if incomplete:
        finished = len(config._compresslab_document["benchmarks"])  # the journals' records included
        terminalreporter.write_line(f"run {incomplete}: the sidecar holds the {finished} case(s) that finished "
                                    f"and is marked incomplete", yellow=True)
    gate_summary(terminalreporter, config)


def gate_summary(terminalreporter, config: pytest.Config) -> None:
    from compresslab import compare

    error = getattr(config, "_compresslab_gate_error", None)
    if error:
        terminalreporter.write_sep("=", "compresslab gate: cannot compare", red=True)
        terminalreporter.write_line(error)
        return
    comparison = getattr(config, "_compresslab_comparison", None)
    if comparison is None:
        return
    terminalreporter.write_sep("=", f"compresslab compare vs {comparison.base.path.name}")
    for line in compare.render(comparison, list_regressions=False).splitlines():
        terminalreporter.write_line(line)
    regressions = comparison.regressions
    if regressions:
        terminalreporter.write_sep("=", f"compresslab regressions: {len(regressions)}", red=True)
        for row, message in regressions:
            terminalreporter.write_line(f"{row.model}-{row.method}: {message}", red=True)
