"""Client side of `latentserve augment`: a resumable job that writes a labelled ImageFolder dataset.

`run_job(client, spec, out_dir)` streams the job's shards (LatentClient.augment) and writes:

    DIR/augment.json          the job manifest: the spec as given and its sha256, the model version the job
                              runs with and its label-check threshold (both pinned at the first run, so a
                              resume never switches them; class_check -1 = off), sizes,
                              class names, factor columns, and `complete` once everything is written
    DIR/<class>/<index>.png   the images (ImageFolder layout; .jpg for jpeg), index zero-padded
    DIR/labels.csv            path,index,class,label,<one column per factor>,seed,handle,model,version,
                              class_confidence (the model's own p(label) with the label check, else empty)
    DIR/.augment/             work state, removed when the job completes: shards/<k>.csv holds the label
                              rows of shard k and is written (atomically) only after every image of the
                              shard is on disk; tmp/ holds files being written

Resumption: running the same spec again with the same DIR skips the committed shards and asks the server for
the others only; images of a half-written shard are written again with the same bytes (image i depends only
on (spec, i): services/augment/spec.py). Every file appears under its final name by an atomic rename, so an
interruption at any point (Ctrl-C, SIGKILL, a server restart) leaves no partial file and no duplicate; the
finished DIR is byte-identical to an uninterrupted run's. Mid-stream, UNAVAILABLE / RESOURCE_EXHAUSTED /
DEADLINE_EXCEEDED (a server restarting, a replica draining, overload, a server-side request_timeout_s) make
the client reconnect with exponential backoff and ask for the remaining shards, for up to `retry_s` without
progress. A DIR with another spec, or with files
but no manifest, is refused before any work.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from latentserve.errors import DeadlineExceededError, OverloadedError, UnavailableError, ValidationError
from latentserve.services.augment.spec import AugmentSpec, ModelFacts, check_spec

MANIFEST = "augment.json"
LABELS = "labels.csv"
WORK = ".augment"
EXTENSIONS = {"png": ".png", "jpeg": ".jpg"}
# server restarting / draining / overloaded, or its request_timeout_s cut a long stream: resume where it stopped
RETRYABLE = (UnavailableError, OverloadedError, DeadlineExceededError)
BACKOFF_S = (0.25, 8.0)  # first and largest wait between reconnects
# Small files cost a create + write + rename each: mostly waiting on the file system, not CPU. Parallel writers
# keep the job at the stream's pace (benchmarks/README.md, Augmentation); each chunk's files are all written
# before the next chunk is read.
WRITER_THREADS = 8


@dataclass
class JobResult:
    out_dir: Path
    count: int
    written: int  # images written by this run
    skipped: int  # images already committed by an earlier run
    seconds: float
    model: str
    version: int
    reconnects: int
    already_complete: bool = False

    @property
    def images_per_s(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0


def facts_from_info(info: Any) -> ModelFacts:
    """ModelFacts of a client ModelInfo (GetModel)."""
    return ModelFacts(name=info.name, version=info.version, class_names=tuple(info.class_names),
                      knobs={k.name: (k.low, k.high, k.unit) for k in info.knobs if k.kind == "factor"},
                      sources=tuple(info.sample_sources),
                      judged_knobs={k.name: {"r2": None if math.isnan(k.r2_judged) else k.r2_judged,
                                             "usable": k.usable, "judge": info.judge}
                                    for k in info.knobs if k.kind == "factor"})


def _atomic_write(path: Path, data: bytes, tmp_dir: Path) -> None:
    tmp = tmp_dir / f"{path.name}.{os.getpid()}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _dump(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


class AugmentJob:
    """One job in one output folder (see the module docstring). `prepare()` checks the folder and the spec
    against the model and returns the shards still to do; `run()` writes them."""

    def __init__(self, client: Any, spec: AugmentSpec, out_dir: str | Path, allow_weak_knobs: bool = False) -> None:
        self.client = client
        self.spec = spec
        self.allow_weak_knobs = bool(allow_weak_knobs)  # use knobs below their quality gate
        self.out = Path(out_dir)
        self.work = self.out / WORK
        self.digest = spec.digest()
        self.manifest: dict = {}
        self.run_spec = spec  # the spec with the model version pinned

    # -- folder and manifest ---------------------------------------------------------------------------
    def prepare(self) -> list[int]:
        manifest_path = self.out / MANIFEST
        if manifest_path.is_file():
            try:
                old = json.loads(manifest_path.read_text())
            except ValueError as exc:
                raise ValidationError(f"{manifest_path}: not a readable job manifest ({exc})") from None
            if old.get("spec_sha256") != self.digest:
                raise ValidationError(
                    f"{self.out} holds another augment job (spec sha256 {str(old.get('spec_sha256'))[:12]}, this spec "
                    f"{self.digest[:12]}): use another --out, or delete it to start over")
            version = int(old["version"])
            pinned = float(old.get("class_check", -1.0))  # jobs written before the check existed ran without
        else:
            if self.out.exists() and any(self.out.iterdir()):
                raise ValidationError(f"{self.out} is not empty and holds no augment job ({MANIFEST}): "
                                      "use an empty or new folder")
            version = self.spec.version
            pinned = None
        info = self.client.get_model(self.spec.model, version or None)
        check_spec(self.spec, facts_from_info(info), files=True, allow_weak_knobs=self.allow_weak_knobs)
        if pinned is None:  # 0 = the model's default threshold, which is 0 when the check is off for it
            resolved = self.spec.class_check or info.class_check_for(self.spec.source)
            pinned = round(float(resolved), 6) if resolved > 0 else -1.0
        self.run_spec = AugmentSpec(**{**self.spec.__dict__, "version": info.version, "class_check": pinned})
        factors = [f.name for f in self.spec.factors]
        self.manifest = {
            "spec": self.spec.to_dict(), "spec_sha256": self.digest, "model": info.name, "version": info.version,
            "class_check": pinned, "count": self.spec.count, "shard_size": self.spec.shard_size,
            "num_shards": self.spec.num_shards,
            "format": self.spec.format, "class_names": list(info.class_names), "factors": factors,
            "labels": LABELS, "layout": "imagefolder", "complete": False,
        }
        self.class_names = list(info.class_names)
        for name in self.class_names:
            if not name or name in (".", "..") or "/" in name or "\\" in name or name == WORK:
                raise ValidationError(f"class name {name!r} cannot be a folder name")
        self.width = max(6, len(str(self.spec.count - 1)))
        self.ext = EXTENSIONS[self.spec.format]
        if manifest_path.is_file() and json.loads(manifest_path.read_text()).get("complete"):
            return []
        (self.work / "shards").mkdir(parents=True, exist_ok=True)
        (self.work / "tmp").mkdir(parents=True, exist_ok=True)
        _atomic_write(manifest_path, _dump(self.manifest), self.work / "tmp")
        done = {int(p.stem) for p in (self.work / "shards").glob("*.csv") if p.stem.isdigit()}
        return [k for k in range(self.spec.num_shards) if k not in done]

    def _header(self) -> list[str]:
        return ["path", "index", "class", "label", *self.manifest["factors"], "seed", "handle", "model", "version",
                "class_confidence"]

    def rel_path(self, index: int, label: int) -> str:
        return f"{self.class_names[label]}/{index:0{self.width}d}{self.ext}"

    # -- writing ---------------------------------------------------------------------------------------
    def _write_chunk(self, chunk: Any, rows: list[list[str]]) -> None:
        """Write a chunk's images (on the writer threads; returns when all are on disk) and add its rows."""
        tmp = self.work / "tmp"
        names = self.manifest["factors"]
        files = []
        for j, index in enumerate(chunk.indices):
            label = int(chunk.labels[j])
            rel = self.rel_path(index, label)
            path = self.out / rel
            if not path.parent.is_dir():
                path.parent.mkdir(parents=True, exist_ok=True)
            files.append((path, chunk.images[j]))
            rows.append([rel, str(index), self.class_names[label], str(label),
                         *(repr(float(chunk.factors[n][j])) for n in names), str(int(chunk.seeds[j])),
                         chunk.handles[j] if chunk.handles else "", chunk.model, str(chunk.version),
                         "" if chunk.class_confidence is None else f"{float(chunk.class_confidence[j]):.6f}"])
        list(self._writers.map(lambda f: _atomic_write(f[0], f[1], tmp), files))

    def _commit_shard(self, shard: int, rows: list[list[str]]) -> None:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        _atomic_write(self.work / "shards" / f"{shard:08d}.csv", buf.getvalue().encode(), self.work / "tmp")

    def _finish(self) -> None:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(self._header())
        parts = [buf.getvalue().encode()]
        for k in range(self.spec.num_shards):
            parts.append((self.work / "shards" / f"{k:08d}.csv").read_bytes())
        _atomic_write(self.out / LABELS, b"".join(parts), self.work / "tmp")
        _atomic_write(self.out / MANIFEST, _dump({**self.manifest, "complete": True}), self.work / "tmp")
        shutil.rmtree(self.work)

    def run(self, retry_s: float = 300.0, progress: Callable[[int], None] | None = None,
            on_start: Callable[[JobResult], None] | None = None, sleep: Callable[[float], None] = time.sleep) -> JobResult:
        """Write the pending shards. `on_start(result)` once the folder is checked (count, skipped known);
        `progress(n)` per chunk written (negative when a half-written shard is dropped to be redone)."""
        t0 = time.monotonic()
        remaining = self.prepare()
        with ThreadPoolExecutor(WRITER_THREADS, thread_name_prefix="augment-write") as self._writers:
            return self._run(remaining, t0, retry_s, progress, on_start, sleep)

    def _run(self, remaining: list[int], t0: float, retry_s: float, progress: Callable[[int], None] | None,
             on_start: Callable[[JobResult], None] | None, sleep: Callable[[float], None]) -> JobResult:
        spec = self.run_spec
        skipped = spec.count - sum(spec.shard_range(k)[1] - spec.shard_range(k)[0] for k in remaining)
        result = JobResult(self.out, spec.count, 0, skipped, 0.0, self.manifest["model"], self.manifest["version"], 0)
        if on_start is not None and remaining:
            on_start(result)
        if not remaining:
            result.already_complete = (self.out / LABELS).is_file()
            if not result.already_complete:
                self._finish()
            result.seconds = time.monotonic() - t0
            return result
        wait, last_progress = BACKOFF_S[0], time.monotonic()
        while remaining:
            rows: list[list[str]] = []
            try:
                for chunk in self.client.augment(spec, shards=remaining, allow_weak_knobs=self.allow_weak_knobs):
                    if chunk.shard != remaining[0] or (not rows and chunk.start != spec.shard_range(chunk.shard)[0]):
                        raise UnavailableError(f"server sent shard {chunk.shard} from {chunk.start}, expected shard "
                                               f"{remaining[0]} from its start")  # never expected; resync
                    self._write_chunk(chunk, rows)
                    if progress is not None:
                        progress(len(chunk.labels))
                    result.written += len(chunk.labels)
                    if chunk.shard_end:
                        self._commit_shard(chunk.shard, rows)
                        remaining.pop(0)
                        rows = []
                        wait, last_progress = BACKOFF_S[0], time.monotonic()
            except RETRYABLE as exc:
                if progress is not None and rows:
                    progress(-len(rows))  # the half-written shard will be written again
                result.written -= len(rows)
                if time.monotonic() - last_progress > retry_s:
                    raise UnavailableError(f"gave up after {retry_s:.0f}s without progress: {exc}") from None
                result.reconnects += 1
                sleep(wait)
                wait = min(wait * 2, BACKOFF_S[1])
                continue
            if remaining:  # the stream ended early without an error: ask again for the rest
                raise UnavailableError(f"the server ended the stream before shard {remaining[0]}")
        self._finish()
        result.seconds = time.monotonic() - t0
        return result
