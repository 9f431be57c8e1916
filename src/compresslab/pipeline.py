"""Chains such as ``distill-half+prune-global-50+int8-dynamic``: stages applied in order, each cached.

Stage keys chain: a stage's key hashes its input stage's key, its own config, the digest of
the code that builds it (its module and the compresslab modules it imports, see
code_digest.py) and the versions of the libraries that shape its output. ``distill-half+int8``
therefore reuses the cached ``distill-half`` stage, and a change to one stage's config or code
rebuilds it and what follows.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from compresslab.assets import distribution_version
from compresslab.cache import ArtifactCache, Entry, cache_key
from compresslab.code_digest import object_digest
from compresslab.device import device_type
from compresslab.methods.base import Method, StageContext
from compresslab.models.spec import RECORDS_DIR, ModelSpec

log = logging.getLogger(__name__)
# one line as each build starts and ends: the plugin and the CLI show it, so a minutes-long build
# (a fine-tune has its own bar; an export or a calibration has none) is seen to be alive
progress = logging.getLogger("compresslab.progress")


def announced(what: str, build):
    """``build`` with a progress line before it; called only when the cache really builds."""
    def run(out):
        progress.info("building %s ...", what)
        build(out)
    return run

CHAIN_SEPARATOR = "+"
# What shapes every checkpoint; a method adds its own requires_packages to its stage key.
CORE_LIBRARIES = ("torch", "transformers", "safetensors")


def parse_chain(chain_id: str, methods: Collection[str]) -> tuple[str, ...]:
    """Split ``a+b+c`` into method ids, rejecting empty or unknown parts with the valid ids.
    ``methods``: the valid ids (or a mapping keyed by them). Every reader of a chain splits it here."""
    parts = tuple(part.strip() for part in chain_id.split(CHAIN_SEPARATOR))
    if not chain_id or any(not part for part in parts):
        raise ValueError(f"malformed method chain {chain_id!r}: expected ids joined by '{CHAIN_SEPARATOR}'")
    for part in parts:
        if part not in methods:
            raise KeyError(f"unknown method {part!r} in chain {chain_id!r}; valid: {', '.join(sorted(methods))}")
    return parts


def library_versions(names: tuple[str, ...]) -> dict[str, str | None]:
    return {name: distribution_version(name) for name in names}


def stage_records(payload: Path) -> dict:
    """The JSON build records a stage left in its records/ directory, by file stem."""
    records = {}
    for path in sorted((Path(payload) / RECORDS_DIR).glob("*.json")):
        try:
            records[path.stem] = json.loads(path.read_text())
        except ValueError as err:
            log.warning("unreadable build record %s: %s", path, err)
    return records


@dataclass(frozen=True)
class StageRecord:
    name: str
    key: str
    built_now: bool
    build_s: float  # seconds the build took when it ran (from the manifest if it was cached)
    records: dict = field(default_factory=dict)  # what the stage wrote to records/ (training steps, ranks)


@dataclass
class BuiltArtifact:
    model_id: str
    chain_id: str
    entry: Entry
    base: Entry
    stages: list[StageRecord] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.entry.payload

    @property
    def built_now(self) -> bool:
        return any(stage.built_now for stage in self.stages)

    @property
    def build_s(self) -> float:
        """Build time of the compression stages (the baseline build is recorded separately)."""
        return sum(stage.build_s for stage in self.stages if stage.name != "base")


def companions_of(method: Method) -> tuple[str, ...]:
    """The registered method ids a method builds on besides its input, when it declares them with a
    ``companions()`` method (a speculative decoder's draft): the pipeline builds each of the baseline,
    as that method's own cached stage, and hands their artifacts to ``apply`` in a CompanionContext."""
    companions = getattr(method, "companions", None)
    return tuple(companions()) if callable(companions) else ()


@dataclass(frozen=True)
class CompanionContext(StageContext):
    companions: Mapping[str, Path] = field(default_factory=dict)  # method id -> its artifact of the baseline


def apply_stage(method: Method, source: Path, out: Path, ctx: StageContext) -> None:
    """``method`` on ``source``; a tokenizer a stage before shipped (a trimmed vocabulary) travels on."""
    from compresslab.models.loading import carry_tokenizer  # torch and transformers: only when building

    method.apply(source, out, ctx)
    if Path(source) != Path(ctx.base_dir):  # the baseline's own tokenizer is every stage's default
        carry_tokenizer(source, out)


class Pipeline:
    def __init__(self, cache: ArtifactCache, methods: dict[str, Method], rebuild: bool = False,
                 tasks: dict | None = None):
        self.cache = cache
        self.methods = methods
        self.tasks = tasks or {}
        self.rebuild = rebuild
        self._rebuilt: set[str] = set()  # --rebuild rebuilds each key once per process, not per test

    def _get(self, key: str, build, inputs: dict) -> tuple[Entry, bool]:
        rebuild = self.rebuild and key not in self._rebuilt
        entry, built_now = self.cache.get_or_build(key, build, inputs=inputs, rebuild=rebuild)
        if built_now:
            self._rebuilt.add(key)
        return entry, built_now

    def base(self, spec: ModelSpec) -> tuple[Entry, StageRecord]:
        inputs = {
            "stage": "base",
            "model": spec.id,
            "source": spec.source.fingerprint(),
            # the builder's code (and the baseline's layout it writes) follows its module's source
            "code": object_digest(spec.source),
            "libraries": library_versions(CORE_LIBRARIES),
        }
        key = cache_key(inputs)
        started = time.perf_counter()
        entry, built_now = self._get(key, announced(f"the baseline of {spec.id}", spec.source.build), inputs)
        if built_now:
            progress.info("built the baseline of %s in %.1fs", spec.id, time.perf_counter() - started)
        return entry, StageRecord("base", key, built_now, entry.build_s)

    def format_providers(self, chain_id: str) -> tuple[str, ...]:
        """The modules of the chain's methods that register a saved format of their own
        (models/formats.py): a fresh process imports them before it loads the artifact. Only
        those: importing the others would add their imports to what a memory probe measures."""
        from compresslab.models.formats import FORMAT_LOADERS

        registering = {saved.load.__module__ for saved in FORMAT_LOADERS}
        chain = {type(self.methods[name]).__module__ for name in parse_chain(chain_id, self.methods)}
        return tuple(sorted(chain & registering))

    def build(self, spec: ModelSpec, chain_id: str, device: str) -> BuiltArtifact:
        names = parse_chain(chain_id, self.methods)
        base, record = self.base(spec)
        artifact = BuiltArtifact(spec.id, chain_id, base, base, [record])
        calibration_task = self.tasks.get(spec.tasks[0])
        ctx = StageContext(spec.id, spec.kind, device, base.payload,
                           getattr(calibration_task, "calibration_texts", None),
                           getattr(calibration_task, "training_examples", None))
        for name in names:
            method = self.methods[name]
            method.check_supported(spec.kind, device)
            if method.identity:
                continue
            companions = self._companions(method, base, ctx, calibration_task)
            artifact.stages += [stage for _, stage in companions.values()]
            artifact.entry, stage = self._apply(method, name, artifact.entry, ctx, calibration_task, companions)
            artifact.stages.append(stage)
        return artifact

    def _companions(self, method: Method, base: Entry, ctx: StageContext,
                    calibration_task) -> dict[str, tuple[Entry, StageRecord]]:
        """Each of ``method``'s companions built of the baseline as its own stage: the key its own row's
        stage has, so a cached one is shared (a speculative decoder's draft is the ``distill-half`` stage)."""
        built = {}
        for name in companions_of(method):
            parse_chain(name, self.methods)  # an unknown id: one line with the valid ones
            companion = self.methods[name]
            companion.check_supported(ctx.kind, ctx.device)
            built[name] = self._apply(companion, name, base, ctx, calibration_task)
        return built

    def _apply(self, method: Method, name: str, source: Entry, ctx: StageContext, calibration_task,
               companions: dict[str, tuple[Entry, StageRecord]] | None = None) -> tuple[Entry, StageRecord]:
        inputs = {
            # calibration data shapes the artifact: its source hash and selection enter the key
            "calibration": calibration_task.fingerprint() if method.uses_task_data and calibration_task else None,
            "stage": name,
            "input": source.key,
            "method": method.fingerprint(),
            # a fix to the method or a helper it imports must not reuse artifacts built before it
            "code": object_digest(method),
            "device": device_type(ctx.device),
            "libraries": library_versions(CORE_LIBRARIES),
        }
        if companions:  # only then: every other stage's key stays what it was
            inputs["companions"] = {companion: entry.key for companion, (entry, _) in companions.items()}
            payloads = {companion: entry.payload for companion, (entry, _) in companions.items()}
            ctx = CompanionContext(**{f.name: getattr(ctx, f.name) for f in dataclasses.fields(StageContext)},
                                   companions=payloads)
        key = cache_key(inputs)
        entry, built_now = self._get(key, announced(f"stage {name} of {ctx.model_id}",
                                                    lambda out: apply_stage(method, source.payload, out, ctx)), inputs)
        if built_now:
            progress.info("built stage %s of %s in %.1fs", name, ctx.model_id, entry.build_s)
        return entry, StageRecord(name, key, built_now, entry.build_s, stage_records(entry.payload))
