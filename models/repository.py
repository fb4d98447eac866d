"""The model repository on disk: `<root>/<name>/<version>/` folders, newest-or-pinned resolution, verified loads.

Used by the serving side, so it imports only numpy and the standard library (no torch, no onnx). Loading
checks every file listed in the manifest (size, then sha256) and raises IntegrityError naming the file; a
version folder is only ever created complete (export writes a hidden temp folder and renames it), so any
mismatch means corruption or tampering, never a half-written export.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from latentserve.errors import IntegrityError, NotFoundError, ValidationError
from latentserve.models.manifest import GRAPH_FORMATS, read_manifest, sha256_file

_VERSION_RE = re.compile(r"^[1-9][0-9]*$")  # "1", "2", ... (no "01", no "v1": those dirs are ignored)


def default_repository_path() -> Path:
    """The bundled repository shipped inside the package (models/repository/); callers pass --repo to override."""
    return Path(__file__).parent / "repository"


@dataclass
class ModelRecord:
    """One loaded (and, unless asked otherwise, verified) model version."""

    name: str
    version: int
    path: Path  # the version directory
    manifest: dict = field(repr=False)

    @property
    def family(self) -> str:
        return self.manifest["family"]

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["class_names"])

    @property
    def factors(self) -> list[dict]:
        return list(self.manifest["factors"])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.manifest["image_shape"])

    @property
    def latent_dim(self) -> int | None:
        ls = self.manifest.get("latent_shape")
        return int(ls[0]) if ls else None

    @property
    def graphs(self) -> list[str]:
        return sorted(self.manifest["graphs"])

    def file(self, name: str) -> Path:
        """Absolute path of a file listed in the manifest (NotFoundError if the manifest does not list it)."""
        if name not in self.manifest["files"]:
            raise NotFoundError(
                f"model {self.name} v{self.version} has no file {name!r}; files: {', '.join(sorted(self.manifest['files']))}"
            )
        return self.path / name

    def graph_path(self, graph: str, fmt: str = "onnx") -> Path:
        """Path of `graph` ('encoder' | 'decoder' | 'probe') as `fmt` ('onnx' | 'torchscript')."""
        if fmt not in GRAPH_FORMATS:
            raise ValidationError(f"graph format {fmt!r} is not one of {', '.join(GRAPH_FORMATS)}")
        graphs = self.manifest["graphs"]
        if graph not in graphs:
            raise NotFoundError(
                f"model {self.name} v{self.version} ({self.family}) has no graph {graph!r}; graphs: {', '.join(sorted(graphs))}"
            )
        return self.file(graphs[graph][fmt])

    @property
    def has_latent_space(self) -> bool:
        return "latent_space.npz" in self.manifest["files"]

    def __str__(self) -> str:
        return f"{self.name} v{self.version} ({self.family}) at {self.path}"


def verify_files(path: Path, manifest: dict, label: str = "") -> None:
    """Check every file the manifest lists: present, same size, same sha256. IntegrityError names the file."""
    label = label or str(path)
    for fname, entry in sorted(manifest["files"].items()):
        p = path / fname
        if not p.is_file():
            raise IntegrityError(f"{label}: file {fname} listed in the manifest is missing ({p})")
        size = p.stat().st_size
        if size != entry["bytes"]:  # cheap check first: truncation shows up without hashing
            raise IntegrityError(f"{label}: file {fname} has {size} bytes, the manifest expects {entry['bytes']}")
        actual = sha256_file(p)
        if actual != entry["sha256"]:
            raise IntegrityError(
                f"{label}: file {fname} sha256 mismatch: manifest expects {entry['sha256']}, file has {actual}"
            )


class Repository:
    """A model repository rooted at `root` (default: the bundled models/repository)."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else default_repository_path()

    def __repr__(self) -> str:
        return f"Repository({str(self.root)!r})"

    # -- listing ---------------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Model names that have at least one integer version directory, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".") and self.versions(p.name))

    def versions(self, name: str) -> list[int]:
        """Integer versions of `name`, ascending; non-integer directories (temp folders, notes) are ignored."""
        d = self.root / name
        if not d.is_dir():
            return []
        return sorted(int(p.name) for p in d.iterdir() if p.is_dir() and _VERSION_RE.match(p.name))

    def next_version(self, name: str) -> int:
        vs = self.versions(name)
        return vs[-1] + 1 if vs else 1

    def resolve(self, name: str, version: int | None = None) -> tuple[int, Path]:
        """(version, directory) of the newest version of `name`, or of the pinned `version`."""
        vs = self.versions(name)
        if not vs:
            known = self.names()
            raise NotFoundError(
                f"no model {name!r} in repository {self.root}; models: {', '.join(known) if known else '(none)'}"
            )
        if version is None:
            v = vs[-1]
        else:
            try:
                v = int(version)
            except (TypeError, ValueError):
                raise ValidationError(f"model version must be an integer, got {version!r}") from None
            if v not in vs:
                raise NotFoundError(f"model {name!r} has no version {v}; versions: {', '.join(map(str, vs))}")
        return v, self.root / name / str(v)

    # -- loading ---------------------------------------------------------------------------------------------
    def load(self, name: str, version: int | None = None, verify: bool = True) -> ModelRecord:
        """Resolve, read and validate the manifest, and (verify=True) check every file's size and sha256."""
        v, path = self.resolve(name, version)
        label = f"model {name} v{v}"
        try:
            manifest = read_manifest(path)
        except ValidationError as exc:
            # A broken manifest in the repository is a corrupt artefact, not a bad request.
            raise IntegrityError(f"{label}: {exc}") from exc
        except NotFoundError as exc:
            raise IntegrityError(f"{label}: {exc}") from exc
        if manifest["name"] != name or manifest["version"] != v:
            raise IntegrityError(
                f"{label}: manifest says {manifest['name']} v{manifest['version']}; the folder was renamed or copied"
            )
        if verify:
            verify_files(path, manifest, label)
        return ModelRecord(name=name, version=v, path=path, manifest=manifest)

    def latent_space(self, record: ModelRecord):
        """The record's `models.latent.LatentSpace` (knobs, PCA, per-class GMM, prior), from latent_space.npz."""
        from latentserve.models.latent import LatentSpace

        if not record.has_latent_space:
            raise NotFoundError(f"model {record.name} v{record.version} ({record.family}) has no latent_space.npz")
        return LatentSpace.load(record.file("latent_space.npz"))
