"""Artifacts shipped inside package-registry distributions (a model in a wheel, a benchmark in an sdist).

A distribution is found by name and version through the index's simple API (PEP 691 JSON), downloaded
once into a cache folder and checked against the index's sha256 (and the pin's, where one is given); a
file inside it is then read out and checked against its own pinned sha256. pip's download command cannot
stand in for this: for an sdist it prepares the metadata first, and pip rejects a PyPI distribution whose
metadata names a direct URL dependency (bigbench 1.0.0 names bleurt as a file URL) before saving it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from paramscope.errors import StudyError

DEFAULT_INDEX = "https://pypi.org/simple"
SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
CHUNK = 1 << 20


def index_url() -> str:
    """The registry's simple API: `PARAMSCOPE_INDEX_URL`, else pip's `PIP_INDEX_URL`, else PyPI."""
    return os.environ.get("PARAMSCOPE_INDEX_URL") or os.environ.get("PIP_INDEX_URL") or DEFAULT_INDEX


def cache_root() -> Path:
    """Where downloaded distributions are kept between runs (each checked by hash whenever it is used)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "paramscope" / "packages"
    return Path(os.environ.get("PARAMSCOPE_PACKAGE_CACHE", default))


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Distribution:
    """One file of a release on the index."""

    package: str
    version: str
    filename: str
    url: str
    sha256: str


def _version_of(filename: str, package: str) -> str | None:
    """The version a wheel or sdist file name carries (None for other files)."""
    stem = normalize(package).replace("-", "_")
    if filename.endswith(".whl"):
        name, version = filename.split("-")[:2]
    elif filename.endswith((".tar.gz", ".zip")):
        base = filename.removesuffix(".tar.gz").removesuffix(".zip")
        name, _, version = base.rpartition("-")
    else:
        return None
    return version if normalize(name).replace("-", "_") == stem else None


def find_distribution(package: str, version: str) -> Distribution:
    """The release's wheel (preferred: nothing to build) or sdist on the index; one clear error otherwise."""
    url = f"{index_url().rstrip('/')}/{normalize(package)}/"
    request = urllib.request.Request(url, headers={"Accept": SIMPLE_JSON})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            listing = json.load(response)
    except urllib.error.HTTPError as e:
        raise StudyError(f"package '{package}' is not on the index {index_url()} (HTTP {e.code})") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise StudyError(f"cannot read the index {index_url()} for '{package}': {e}") from None
    files = [f for f in listing.get("files", []) if _version_of(f["filename"], package) == version]
    if not files:
        versions = sorted({v for f in listing.get("files", []) if (v := _version_of(f["filename"], package))})
        raise StudyError(f"package '{package}' has no version {version} on the index; valid: {', '.join(versions)}")
    chosen = min(files, key=lambda f: (not f["filename"].endswith(".whl"), f["filename"]))
    sha = chosen.get("hashes", {}).get("sha256")
    if not sha:
        raise StudyError(f"the index gives no sha256 for {chosen['filename']}; refusing an unverifiable download")
    return Distribution(package, version, chosen["filename"], urllib.parse.urljoin(url, chosen["url"]), sha)


def download(dist: Distribution, expected_sha256: str | None = None) -> Path:
    """The distribution file in the cache, downloaded if it is not there whole; checked by sha256."""
    if expected_sha256 and expected_sha256 != dist.sha256:
        raise StudyError(f"{dist.filename}: the pinned sha256 {expected_sha256} is not the index's {dist.sha256}")
    path = cache_root() / dist.filename
    if path.is_file() and sha256_of(path) == dist.sha256:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{dist.filename}.")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(dist.url, timeout=600) as response:
            shutil.copyfileobj(response, out, CHUNK)
        if (got := sha256_of(Path(partial))) != dist.sha256:
            raise StudyError(f"{dist.filename} downloaded with sha256 {got}, not the index's {dist.sha256}")
        os.replace(partial, path)
    except (urllib.error.URLError, OSError) as e:
        raise StudyError(f"cannot download {dist.url}: {e}") from None
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return path


def cached(package: str, version: str, sha256: str) -> Path | None:
    """A pinned distribution already in the cache (then the index is not asked: a rerun works offline)."""
    root = cache_root()
    for path in sorted(root.glob("*")) if root.is_dir() else []:
        if _version_of(path.name, package) == version and sha256_of(path) == sha256:
            return path
    return None


def fetch_distribution(package: str, version: str, sha256: str | None = None) -> Path:
    """`package==version` from the registry, as a local (cached, hash-checked) wheel or sdist file."""
    if sha256 and (path := cached(package, version, sha256)):
        return path
    try:
        dist = find_distribution(package, version)
    except StudyError as err:
        if not sha256:
            raise
        # A release can leave the index (bigbench 1.0.0 has): a copy kept from an earlier download still works.
        raise StudyError(f"{err}; a copy of {package} {version} with the pinned sha256 {sha256} placed in "
                         f"{cache_root()} is used without the index") from None
    return download(dist, sha256)


class Archive:
    """A wheel (zip) or sdist (tar.gz) read by member path; an sdist's top folder (`name-version/`) is
    implied, so a path reads the same in either."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if self.path.suffix in (".whl", ".zip"):
            self._zip = zipfile.ZipFile(self.path)
            self._tar = None
            names = self._zip.namelist()
        else:
            self._zip = None
            self._tar = tarfile.open(self.path, "r:*")
            names = [m.name for m in self._tar.getmembers() if m.isfile()]
        top = {n.split("/", 1)[0] for n in names}
        self._prefix = f"{top.pop()}/" if self._tar is not None and len(top) == 1 else ""
        self.names = sorted(n.removeprefix(self._prefix) for n in names)

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc) -> None:
        (self._zip or self._tar).close()

    def require(self, member: str) -> None:
        if member not in self.names:
            near = [n for n in self.names if Path(n).name == Path(member).name][:3]
            hint = f"; files of that name: {', '.join(near)}" if near else ""
            raise StudyError(f"{self.path.name} has no file '{member}'{hint}")

    @contextmanager
    def open(self, member: str) -> Iterator:
        self.require(member)
        if self._zip is not None:
            with self._zip.open(member) as f:
                yield f
        else:
            with self._tar.extractfile(self._prefix + member) as f:
                yield f

    def read_all(self, wanted) -> dict[str, bytes]:
        """Every member for which ``wanted(path)`` holds, in one pass: a compressed tar cannot seek back
        cheaply, so reading members one by one would decompress it again for each."""
        if self._zip is not None:
            return {n: self._zip.read(n) for n in self.names if wanted(n)}
        found = {}
        with tarfile.open(self.path, "r|*") as stream:  # streaming mode: one forward pass
            for member in stream:
                name = member.name.removeprefix(self._prefix)
                if member.isfile() and wanted(name):
                    found[name] = stream.extractfile(member).read()
        return found

    def extract(self, member: str, dest: Path, sha256: str | None = None) -> Path:
        """Copy one member to `dest`, checking its sha256 when pinned; nothing is left on a mismatch."""
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        try:
            with self.open(member) as src, open(dest, "wb") as out:
                while block := src.read(CHUNK):
                    digest.update(block)
                    out.write(block)
            if sha256 and digest.hexdigest() != sha256:
                raise StudyError(f"{self.path.name}:{member} has sha256 {digest.hexdigest()}, not the pinned {sha256}")
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
        return dest
