"""The pytest plugin's hooks: options, the session's start and end, the tiers of the matrix, each
case's record, the terminal summary; and the ``compressed`` fixture.

Split the way pytest-benchmark splits its own: the hooks here, one session object registered on
the config (session.py: settings, floors, gate, records, the case runner and shared timings),
and the case a benchmark gets from the fixture (fixture.py). Loaded through the ``pytest11``
entry point in every pytest run of an environment where compresslab is installed, so these
modules import only pytest and the standard library at import time; torch and friends load when
a compresslab fixture is first used.
"""

from __future__ import annotations

import contextlib
import logging
import os

import pytest

from compresslab.fixture import Case
from compresslab.session import (DEFAULT_ROUNDS, DEFAULT_WARMUP, STASH_KEY, CompresslabSession, remote_cache_url,
                                 session_of)

log = logging.getLogger("compresslab")

CASE_ID = pytest.StashKey[tuple]()  # on a test item: the (model, chain) its compressed fixture builds
CASE = pytest.StashKey[Case]()  # on a test item: the Case the fixture yielded
RECORDS_KEY = "compresslab_records"
RUN_ID_KEY = "compresslab_run_id"
ROOFLINE_KEY = "compresslab_roofline"  # a worker's probe of the machine's peaks, handed to the controller
TIERS = ("smoke", "default", "full")  # nested, smallest first (matrix.tier_of says which holds a case)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("compresslab", "compresslab: compression benchmarks")
    group.addoption("--compresslab-cache-dir", default=None,
                    help="artifact cache (default: $COMPRESSLAB_CACHE_DIR or the user cache dir)")
    group.addoption("--compresslab-remote-cache", default=None, metavar="URL",
                    help="a remote artifact cache shared between machines: s3://, gs://, az://, file:// or a "
                         "filesystem path (default: $COMPRESSLAB_REMOTE_CACHE; none)")
    group.addoption("--compresslab-rebuild", action="store_true", help="rebuild every artifact the run uses")
    group.addoption("--compresslab-config", default=None, metavar="FILE",
                    help="the project's compresslab config (default: compresslab.toml, or [tool.compresslab] in "
                         "pyproject.toml, in rootdir)")
    group.addoption("--compresslab-floors", default=None,
                    help="floors file (default: floors.toml in rootdir, else compresslab's defaults); a project's "
                         "[floors] apply over it")
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
    group.addoption("--compresslab-shard", default=None, metavar="I/N",
                    help="run shard I of N of the selected cases (default: $COMPRESSLAB_SHARD); cases sharing a model "
                         "and first stage stay together; `compresslab merge` joins the shards' runs")
    group.addoption("--compresslab-allow-missing", action="store_true",
                    help="with --compresslab-baseline: a collected case that passed in the baseline and is skipped "
                         "now is no regression (one that fails or errors still is)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "compresslab(models=None, methods=None): the cases a test taking the "
                                       "`compressed` fixture runs: model ids (one or a list) and method ids or "
                                       "chains (default: the project's matrix)")
    config.addinivalue_line("markers", "smoke: a case of the smoke tier (what CI runs on every pull request)")
    config.addinivalue_line("markers", "slow: a case of the full tier only (slow to build, or a known failure)")
    config.addinivalue_line("markers", "compresslab_tiered: a case of the registry's matrix, which --compresslab-tier "
                                       "(default: default) selects from")
    is_worker = hasattr(config, "workerinput")
    run_id = config.workerinput[RUN_ID_KEY] if is_worker else new_run_id()
    session = config.stash[STASH_KEY] = CompresslabSession(config, run_id, is_worker)  # checks the gate's options
    session.check_project()
    remote_cache_url(config)  # a bad URL or a missing backend package: one usage line now
    check_matrix_env(session)
    from compresslab import shard

    shard.configure(config)  # a bad --compresslab-shard: one usage line, before collection
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
        session_of(config).stop_signal = "SIGTERM"
        raise KeyboardInterrupt("SIGTERM")

    signal.signal(signal.SIGTERM, interrupt)
    config.add_cleanup(lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))


def check_matrix_env(session: CompresslabSession) -> None:
    """A bad COMPRESSLAB_MATRIX is one usage-error line before collection, not a collection error."""
    from compresslab.matrix import ENV

    if os.environ.get(ENV):
        from compresslab import matrix

        try:
            matrix.selected_matrix(session.catalog)
        except (KeyError, ValueError) as err:
            raise pytest.UsageError(err.args[0] if isinstance(err, KeyError) else str(err)) from None


def new_run_id() -> str:
    import time
    import uuid

    return f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """xdist controller: every worker appends to this run's journal under the same run id."""
    node.workerinput[RUN_ID_KEY] = session_of(node.config).run_id


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

    session = session_of(config)
    session.settings  # noqa: B018  # checked now: a bad option is a usage error before anything builds
    # the registry's matrix (marked compresslab_tiered) runs the default tier unless told otherwise;
    # a case list given by COMPRESSLAB_MATRIX or a project's own parametrization runs as listed
    explicit_tier = config.getoption("--compresslab-tier")
    run_tier = explicit_tier or "default"
    outside = []
    for item, (model_id, chain_id) in cases:
        floor = session.floor_for(model_id, chain_id)
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
    session.tier_counts = (run_tier, len(cases) - len(outside), len(cases))


def case_tier(model_id: str, chain_id: str, known_bad: bool) -> str:
    from compresslab import matrix

    return matrix.tier_of(model_id, chain_id, known_bad)


def in_tier(case: str, run: str) -> bool:
    return TIERS.index(case) <= TIERS.index(run)


def pytest_report_collectionfinish(config: pytest.Config, start_path, items) -> str | None:
    counts = session_of(config).tier_counts
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
def compresslab_session(request: pytest.FixtureRequest) -> CompresslabSession:
    return session_of(request.config)


def case_params(matrix: dict[str, tuple[str, ...]], tiered: bool = False) -> list:
    """pytest params with ids ``<model>-<method>`` so ``-k "smollm2 and int8"`` selects as expected.
    ``tiered``: the run's tier (--compresslab-tier) deselects the cases outside it; otherwise the
    list runs as given unless --compresslab-tier is set."""
    marks = (pytest.mark.compresslab_tiered,) if tiered else ()
    return [pytest.param((model_id, chain_id), id=f"{model_id}-{chain_id}", marks=marks)
            for model_id, chains in matrix.items() for chain_id in chains]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test that takes ``compressed`` and does not parametrize it itself runs once per case: those of
    its ``@pytest.mark.compresslab(models=..., methods=...)`` marker, else COMPRESSLAB_MATRIX, else the
    catalog's matrix (a project's list, or the registry's, whose tiers the run selects from)."""
    if "compressed" not in metafunc.fixturenames or _parametrizes_compressed(metafunc):
        return
    session = session_of(metafunc.config)
    marker = metafunc.definition.get_closest_marker("compresslab")
    try:
        cases, tiered = selected_cases(session.catalog, marker)
    except (KeyError, ValueError, TypeError) as err:
        where = metafunc.definition.nodeid
        raise pytest.UsageError(f"{where}: @pytest.mark.compresslab: {err.args[0]}") from None
    metafunc.parametrize("compressed", case_params(cases, tiered=tiered), indirect=True)


def _parametrizes_compressed(metafunc: pytest.Metafunc) -> bool:
    for marker in metafunc.definition.iter_markers("parametrize"):
        names = marker.args[0] if marker.args else marker.kwargs.get("argnames", ())
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
        if "compressed" in names:
            return True
    return False


def selected_cases(catalog, marker: pytest.Mark | None) -> tuple[dict[str, tuple[str, ...]], bool]:
    """{model: chains} a test runs, and whether the run's tier selects from them (the registry's
    matrix only: a list someone wrote down runs as written)."""
    from compresslab import matrix
    from compresslab.pipeline import parse_chain

    explicit = bool(os.environ.get(matrix.ENV))
    cases = matrix.selected_matrix(catalog)
    if marker is None:
        return cases, catalog.tiered and not explicit
    unknown_args = set(marker.kwargs) - {"models", "methods"}
    if marker.args or unknown_args:
        raise TypeError(f"takes keyword arguments models= and methods= only, got "
                        f"{', '.join([*map(repr, marker.args), *sorted(unknown_args)])}")
    models = _names(marker.kwargs.get("models"), "models") or list(cases)
    for model_id in models:
        catalog.get_model(model_id)
    methods = _names(marker.kwargs.get("methods"), "methods")
    for chain_id in methods or ():
        parse_chain(chain_id, catalog.methods)
    if methods is None:
        missing = [model_id for model_id in models if model_id not in cases]
        if missing:
            raise ValueError(f"{', '.join(missing)} has no matrix entry; give methods=[...]")
        return {model_id: cases[model_id] for model_id in models}, catalog.tiered and not explicit
    return {model_id: tuple(methods) for model_id in models}, False


def _names(value, what: str) -> list[str] | None:
    if value is None:
        return None
    names = [value] if isinstance(value, str) else list(value)
    if not names or not all(isinstance(name, str) for name in names):
        raise TypeError(f"{what}= must be an id or a non-empty list of ids, got {value!r}")
    return names


@pytest.fixture
def compressed(request: pytest.FixtureRequest, compresslab_session: CompresslabSession):
    """The case ``(model_id, chain_id)`` of the test's parameter (pytest_generate_tests, or the test's
    own ``parametrize(..., indirect=True)``): built (cached) and evaluated, yielded as a Case."""
    from compresslab.errors import MethodUnsupported, Unavailable

    if not hasattr(request, "param"):
        pytest.fail("the compressed fixture needs a case: see @pytest.mark.compresslab", pytrace=False)
    model_id, chain_id = request.param
    catalog = compresslab_session.catalog
    spec = catalog.get_model(model_id)
    request.node.stash[CASE_ID] = (model_id, chain_id)
    try:
        compresslab_session.cases.check_available(spec)
        with live_output(request.config):
            case = Case.build(compresslab_session, spec, chain_id, catalog.baseline_method)
    except (Unavailable, MethodUnsupported) as err:
        pytest.skip(f"{model_id}-{chain_id}: {err}")
    request.node.stash[CASE] = case
    yield case
    if not case.is_baseline:
        case.measurement.release()


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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    case_id = item.stash.get(CASE_ID, None)
    if case_id is None or not _is_final(report):
        return
    from compresslab.results import CaseRecord, CaseResult

    case = item.stash.get(CASE, None)
    result = case.result if case else CaseResult()
    violations = result.floor_violations
    record = CaseRecord(item.name, case_id[0], case_id[1], _outcome(report), result, fullname=item.nodeid,
                        reason="; ".join(violations) if violations and not report.passed else _reason(report),
                        expected_failure=getattr(report, "wasxfail", None))
    session_of(item.config).record(record)
    benchmark = getattr(item, "funcargs", {}).get("benchmark")
    if benchmark is not None and case is not None:  # pytest-benchmark's JSON then says how the case ended
        benchmark.extra_info.update(case.extra_info(outcome=report.outcome))


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
    """xdist controller: gather each worker's records (and its roofline probe)."""
    output = getattr(node, "workeroutput", {})
    session_of(node.config).add_worker_records(output.get(RECORDS_KEY, []))
    if output.get(ROOFLINE_KEY):
        session_of(node.config).worker_peaks[output.get("workerid", str(node.gateway.id))] = output[ROOFLINE_KEY]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if hasattr(config, "workerinput"):  # xdist worker: hand records to the controller
        config.workeroutput[RECORDS_KEY] = session_of(config).worker_output()
        config.workeroutput[ROOFLINE_KEY] = session_of(config).roofline_info()
        return
    session_of(config).finish(session, exitstatus)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    session = session_of(config)
    if session.is_worker or not session.records:
        return
    from compresslab import report

    terminalreporter.write_sep("=", "compresslab results")
    for line in report.render_table(session.records).splitlines():
        terminalreporter.write_line(line)
    ending = session.ending
    if ending.sidecar:
        terminalreporter.write_line(f"sidecar: {ending.sidecar}")
    if ending.incomplete:  # the journals' records included
        terminalreporter.write_line(f"run {ending.incomplete}: the sidecar holds the {ending.cases} case(s) that "
                                    f"finished and is marked incomplete", yellow=True)
    gate_summary(terminalreporter, ending)


def gate_summary(terminalreporter, ending) -> None:
    from compresslab import compare

    if ending.gate_error:
        terminalreporter.write_sep("=", "compresslab gate: cannot compare", red=True)
        terminalreporter.write_line(ending.gate_error)
        return
    comparison = ending.comparison
    if comparison is None:
        return
    terminalreporter.write_sep("=", f"compresslab compare vs {comparison.base.path.name}")
    for line in compare.render(comparison, list_regressions=False).splitlines():
        terminalreporter.write_line(line)
    regressions = comparison.regressions
    if regressions:
        terminalreporter.write_sep("=", f"compresslab regressions: {len(regressions)}", red=True)
        for row, message in regressions:
            terminalreporter.write_line(f"{row.model}-{row.chain}: {message}", red=True)
