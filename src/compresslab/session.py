"""One compresslab session per pytest run: its settings, floors, gate, run id and records, the
case runner (pipeline and each model's baseline) and the timings shared between cases.

It is registered on the pytest config by ``pytest_configure`` (``session_of(config)`` finds it);
the hooks in plugin.py and the case fixture (fixture.py) call its methods and never reach into
its state. Like plugin.py, it imports only pytest and the standard library at import time: torch
and friends load when a case first needs the runner.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

DEFAULT_ROUNDS = 30
DEFAULT_WARMUP = 5
STASH_KEY: pytest.StashKey[CompresslabSession] = pytest.StashKey()


def session_of(config: pytest.Config) -> CompresslabSession:
    return config.stash[STASH_KEY]


@dataclass(frozen=True)
class Settings:
    cache_dir: Path
    rebuild: bool
    device: str
    threads: int
    rounds: int
    warmup: int
    memory: str
    reeval: bool
    remote_cache: str | None = None  # an fsspec URL (remote_cache.py), or None: the local cache only

    @classmethod
    def from_config(cls, config: pytest.Config) -> Settings:
        """The run's settings, checked: a bad device, count or cache directory is one line and
        pytest's usage-error exit (4), not an error per case."""
        from compresslab import device

        option = config.getoption
        try:
            settings = cls(
                cache_dir=Path(option("--compresslab-cache-dir") or default_cache_dir()).expanduser(),
                rebuild=option("--compresslab-rebuild"),
                device=device.resolve(option("--compresslab-device"), os.environ.get("PYTEST_XDIST_WORKER")),
                threads=device.available_cpus() if option("--compresslab-threads") is None
                else option("--compresslab-threads"),
                rounds=option("--compresslab-rounds"),
                warmup=option("--compresslab-warmup"),
                memory=option("--compresslab-memory"),
                reeval=option("--compresslab-reeval") or option("--compresslab-rebuild"),
                remote_cache=remote_cache_url(config),
            )
        except ValueError as err:  # DeviceError
            raise pytest.UsageError(str(err)) from None
        settings.check()
        return settings

    def check(self) -> None:
        for name, least in (("threads", 1), ("rounds", 1), ("warmup", 0)):
            if getattr(self, name) < least:
                raise pytest.UsageError(f"--compresslab-{name} must be >= {least}, got {getattr(self, name)}")
        from compresslab.cache import CacheError, check_usable

        try:
            check_usable(self.cache_dir)
        except CacheError as err:
            raise pytest.UsageError(str(err)) from None


def remote_cache_url(config: pytest.Config) -> str | None:
    """--compresslab-remote-cache, else $COMPRESSLAB_REMOTE_CACHE; a bad scheme or a missing backend
    package is one usage-error line (pytest_configure calls it: before anything builds)."""
    from compresslab import remote_cache

    try:
        return remote_cache.configured(config.getoption("--compresslab-remote-cache"))
    except remote_cache.RemoteCacheError as err:
        raise pytest.UsageError(str(err)) from None


def default_cache_dir() -> Path:
    if os.environ.get("COMPRESSLAB_CACHE_DIR"):
        return Path(os.environ["COMPRESSLAB_CACHE_DIR"])
    import platformdirs

    return Path(platformdirs.user_cache_dir("compresslab"))


def probe_peaks(device: str) -> Any:
    """This machine's roofline peaks (trackers/roofline.py), with the threads just pinned; None, with a
    warning, when the probe cannot run (the cases still run, without their roofline fractions)."""
    import logging

    from compresslab.pipeline import progress
    from compresslab.trackers import roofline

    progress.info("probing this machine's peaks (GEMM GFLOP/s, memory GB/s) ...")
    try:
        peaks = roofline.probe(device)
    except (RuntimeError, MemoryError) as err:
        logging.getLogger("compresslab").warning("roofline probe failed, no roofline fractions: %s", err)
        return None
    progress.info("peaks: %s GFLOP/s, %.1f GB/s read", ", ".join(f"{k} {v:.0f}" for k, v in peaks.gflops.items()),
                  peaks.bandwidth_gbs)
    return peaks


def results_dir(config: pytest.Config) -> Path:
    path = Path(config.getoption("--compresslab-results-dir"))
    return path if path.is_absolute() else Path(config.rootpath) / path


@dataclass(frozen=True)
class Gate:
    baseline: Any  # runs.Run
    rules: list
    allow_missing: bool = False

    @classmethod
    def from_config(cls, config: pytest.Config) -> Gate | None:
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
        return cls(baseline, parsed, config.getoption("--compresslab-allow-missing"))


@dataclass
class Ending:
    """How the session ended, for the terminal summary: the sidecar written, why the run stopped
    early, and the gate's comparison (or why it could not compare)."""

    sidecar: Path | None = None
    cases: int = 0
    incomplete: str | None = None
    comparison: Any = None  # compare.Comparison
    gate_error: str | None = None


class CompresslabSession:
    def __init__(self, config: pytest.Config, run_id: str, is_worker: bool) -> None:
        self.config, self.run_id, self.is_worker = config, run_id, is_worker
        self.results_dir = results_dir(config)
        self.gate = None if is_worker else Gate.from_config(config)
        self.records: list[Any] = []  # results.CaseRecord, in the order the cases ended
        self.stop_signal: str | None = None  # "SIGTERM" when a signal stopped the run
        self.tier_counts: tuple[str, int, int] | None = None  # (tier, cases kept, cases collected)
        self.ending = Ending()
        self.sidecar_fields: dict[str, Any] = {}  # more of the run for its sidecar (shard.py: which shard)
        self._settings: Settings | None = None
        self._floors = None
        self._catalog = None
        self._family_of: dict[str, str] | None = None
        self._cases = None
        self._baseline_workloads: dict[str, Any] = {}
        self.peaks: Any = None  # trackers.roofline.Peaks of this process, probed before its first case
        self.worker_peaks: dict[str, dict[str, Any]] = {}  # xdist controller: each worker's, as JSON

    # --- settings and floors, checked once before anything builds ----------------------------------

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = Settings.from_config(self.config)
        return self._settings

    @property
    def catalog(self) -> Any:
        """What the run can benchmark (catalog.Catalog): the project's config over compresslab's
        registry, or the registry alone; read once, and checked before anything builds."""
        if self._catalog is None:
            from compresslab import project
            from compresslab.errors import ConfigError

            explicit = self.config.getoption("--compresslab-config")
            try:
                self._catalog = project.load_catalog(Path(self.config.rootpath), Path(explicit) if explicit else None)
            except ConfigError as err:
                raise pytest.UsageError(str(err)) from None
        return self._catalog

    def check_project(self) -> None:
        """A project's config is read (and a bad one refused) at configure time; without one, nothing
        heavy is imported until a case needs it (the plugin loads in every pytest run)."""
        from compresslab import project
        from compresslab.errors import ConfigError

        explicit = self.config.getoption("--compresslab-config")
        try:
            found = project.find(Path(self.config.rootpath), Path(explicit) if explicit else None)
        except ConfigError as err:
            raise pytest.UsageError(str(err)) from None
        if found is not None:
            self.catalog  # noqa: B018

    @property
    def floors(self) -> Any:
        """The run's floors, parsed once (collection marks known failures, cases check floors): the
        floors file (--compresslab-floors, a floors.toml in rootdir, or compresslab's defaults) with the
        project's floors over it."""
        if self._floors is None:
            from compresslab import floors

            option, here = self.config.getoption("--compresslab-floors"), Path(self.config.rootpath) / "floors.toml"
            path = Path(option) if option else here if here.is_file() else floors.DEFAULT_FLOORS
            catalog = self.catalog
            try:
                self._floors = floors.load_layers(path, catalog.floors, catalog.floors_source, catalog.models,
                                                  catalog.methods)
            except floors.FloorsError as err:
                raise pytest.UsageError(str(err)) from None
        return self._floors

    def floor_for(self, model_id: str, chain_id: str) -> Any:
        if self._family_of is None:
            self._family_of = self.catalog.family_of()
        return self.floors.floor_for(model_id, chain_id, self._family_of)

    # --- the cases ----------------------------------------------------------------------------------

    @property
    def cases(self) -> Any:
        """The case runner (cases.CaseRunner), built when the first case needs it."""
        if self._cases is None:
            from compresslab import device
            from compresslab.cache import ArtifactCache
            from compresslab.cases import CaseRunner
            from compresslab.methods.gptq import cpu_workers_default
            from compresslab.pipeline import Pipeline

            settings = self.settings
            device.pin_threads(settings.threads)
            cpu_workers_default(settings.threads)
            self.peaks = probe_peaks(settings.device)
            catalog = self.catalog
            remote = None
            if settings.remote_cache:
                from compresslab.remote_cache import RemoteCache

                remote = RemoteCache(settings.remote_cache)
            pipeline = Pipeline(ArtifactCache(settings.cache_dir, remote=remote), catalog.methods,
                                rebuild=settings.rebuild, tasks=catalog.tasks)
            self._cases = CaseRunner(pipeline, catalog.tasks, settings.device, settings.threads,
                                     memory=settings.memory, reeval=settings.reeval)
        return self._cases

    def run_info(self, result: Any) -> None:
        """Into ``result`` (results.CaseResult): where and with what the case ran."""
        from compresslab import __version__, device
        from compresslab.pipeline import library_versions

        result.device, result.device_name = self.settings.device, device.describe(self.settings.device)
        result.threads = self.settings.threads
        result.libraries = {"compresslab": __version__, **library_versions(
            ("torch", "transformers", "torchao", "onnxruntime", "openvino", "nncf", "pytest-benchmark"))}

    # --- timings shared between cases -----------------------------------------------------------------

    def baseline_block(self, spec, baseline) -> Any:
        """One block of fp32 rounds, back to back, with its own warm-up (another runtime has just
        had the cores): half a case's rounds, so the blocks before and after one case hold as
        many rounds as the case."""
        from compresslab.trackers import latency

        inputs = self.cases.timed_inputs(spec, baseline.runner)
        return latency.time_calls(lambda: baseline.runner.logits(inputs), self.settings.device,
                                  rounds=max(3, self.settings.rounds // 2), warmup=self.settings.warmup)

    def second_workload(self, spec, runner) -> Any:
        """Batch 16 (classifier) or per-token decode (causal LM) of ``runner`` (trackers/workloads.py)."""
        from compresslab.trackers.workloads import second_workload

        task, settings = self.catalog.tasks[spec.tasks[0]], self.settings
        return second_workload(runner, lambda n: task.latency_inputs(runner.tokenizer, spec.latency_seq_len, n),
                               settings.device, settings.rounds, settings.warmup)

    def baseline_workload(self, spec, baseline, measured: Any = None) -> Any:
        """fp32's second workload of this run, timed once per model: ``measured`` when the baseline
        case itself just timed it, else timed now."""
        if spec.id not in self._baseline_workloads:
            self._baseline_workloads[spec.id] = measured or self.second_workload(spec, baseline.runner)
        return self._baseline_workloads[spec.id]

    # --- records ------------------------------------------------------------------------------------

    def record(self, record: Any) -> None:
        """A finished case (results.CaseRecord): its roofline fractions of this process's peaks added,
        kept for the sidecar and appended to this process's journal before the next case starts (one
        journal file per process: xdist workers never share one)."""
        from compresslab import results

        if self.peaks is not None:
            from compresslab.trackers import roofline

            roofline.add_fractions(record.result, self.peaks)
        self.records.append(record)
        process = os.environ.get("PYTEST_XDIST_WORKER", "main")
        results.append_to_journal(results.journal_path(self.results_dir, self.run_id, process), record)

    def add_worker_records(self, documents: list[dict[str, Any]]) -> None:
        """xdist controller: a worker's records, as it handed them over (their JSON form)."""
        from compresslab.results import CaseRecord

        self.records.extend(CaseRecord.from_sidecar(document) for document in documents)

    def worker_output(self) -> list[dict[str, Any]]:
        return [record.to_json() for record in self.records]

    def roofline_info(self) -> dict[str, Any] | None:
        """The run-level probe figures: this process's, or under xdist each worker's (each probed
        its own before its first case)."""
        if self.peaks is not None:
            return self.peaks.as_json()
        return {"workers": dict(sorted(self.worker_peaks.items()))} if self.worker_peaks else None

    def with_journal_records(self, journal: list[dict[str, Any]]) -> list[Any]:
        """This session's records, plus those only a journal holds (an xdist worker that was stopped
        before it could hand its records over); a journal line of another shape is passed over."""
        from compresslab.results import CaseRecord, Malformed

        names = {record.name for record in self.records}
        extra = []
        for document in journal:
            if document.get("name") in names:
                continue
            try:
                extra.append(CaseRecord.from_sidecar(document))
            except Malformed:
                continue
        return [*self.records, *extra]

    # --- the end --------------------------------------------------------------------------------------

    def finish(self, session: pytest.Session, exitstatus: int) -> None:
        """Write the sidecar (the journals' records included), drop the journals, run the gate."""
        from compresslab import results

        out = self.results_dir
        journals = results.run_journals(out, self.run_id)
        records = self.with_journal_records(results.read_journal(journals))
        if not records:
            return
        if exitstatus == pytest.ExitCode.INTERRUPTED:
            self.ending.incomplete = f"interrupted ({self.stop_signal or 'KeyboardInterrupt'})"
        document = results.sidecar_document(records, out, self.ending.incomplete, self.roofline_info())
        document.update(settings=self.recorded_settings(), **self.sidecar_fields)
        self.ending.sidecar = results.write_sidecar(document, out)
        self.ending.cases = len(records)
        results.drop_journals(journals)
        if self.gate is not None:
            self.check_gate(session, records, document)

    def recorded_settings(self) -> dict[str, Any] | None:
        """The settings that shape the run's numbers, as its sidecar records them: runs merged into
        one (``compresslab merge``) must agree on them."""
        from compresslab.device import device_type
        from compresslab.matrix import ENV

        try:
            settings = self.settings
        except pytest.UsageError:
            return None
        return {"device": device_type(settings.device), "threads": settings.threads, "rounds": settings.rounds,
                "warmup": settings.warmup, "memory": settings.memory,
                "tier": self.config.getoption("--compresslab-tier"), "matrix": os.environ.get(ENV)}

    def check_gate(self, session: pytest.Session, records: list[Any], document: dict[str, Any]) -> None:
        """Compare this run (its records in memory) with the baseline; a regression turns a passing
        session into a failing one, a run compare cannot read into a usage error."""
        import dataclasses

        from compresslab import compare, runs

        head = runs.Run(self.ending.sidecar, "sidecar", {record.name: record for record in records},
                        commit=document["commit_info"].get("commit"), branch=document["commit_info"].get("branch"),
                        created=document["created"], incomplete=document.get("incomplete"))
        # the baseline's cases this session collected: one deselected by -k is not lost, while one
        # collected that skipped or failed before recording anything is (an xdist controller collects
        # nothing itself: there the cases head recorded stand for the collected ones)
        names = {item.name for item in session.items} | set(head.records)
        baseline = dataclasses.replace(self.gate.baseline, records={
            name: record for name, record in self.gate.baseline.records.items() if name in names})
        try:
            self.ending.comparison = compare.compare(baseline, head, self.gate.rules,
                                                     allow_missing=self.gate.allow_missing)
        except runs.RunError as err:
            self.ending.gate_error = str(err)
            session.exitstatus = pytest.ExitCode.USAGE_ERROR
            return
        if self.ending.comparison.regressions and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
