"""Finding, downloading and loading Fashion-MNIST (see :func:`load_fashion_mnist`)."""

from __future__ import annotations

import dataclasses
import http.client
import os
import sys
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

from ._idx import SPECS, DataError, IdxSpec, decode_idx, find_file, read_idx

CLASSES: tuple[str, ...] = (
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)
"""The ten class names, indexed by label (the book's ``get_fashion_mnist_labels``)."""

DEFAULT_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
URL_ENV = "JAXCNN_FASHION_MNIST_URL"
DATA_ENV = "JAXCNN_DATA"
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
_APT = "sudo apt-get install dataset-fashion-mnist"
_TIMEOUT_S = 60.0


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class FashionMNIST:
    """The verified dataset as read-only uint8 arrays: images ``(N, 28, 28)`` (row-major,
    0 = background), labels ``(N,)`` in ``[0, 10)``; N = 60000 train, 10000 test. ``source``
    is the directory the files came from."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str

    def __repr__(self) -> str:
        return (
            f"FashionMNIST(train={self.train_images.shape}, test={self.test_images.shape}, "
            f"source={self.source!r})"
        )


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/jaxcnn/fashion-mnist``, or ``~/.cache/jaxcnn/fashion-mnist``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "jaxcnn" / "fashion-mnist"


def _file_list() -> str:
    return ", ".join(f"{spec.name}[.gz]" for spec in SPECS)


def _is_complete(directory: Path) -> bool:
    return all(find_file(spec, directory) is not None for spec in SPECS)


def _assemble(arrays: dict[str, np.ndarray], directory: Path) -> FashionMNIST:
    return FashionMNIST(**arrays, source=str(directory))


def load_fashion_mnist(
    data_dir: str | os.PathLike[str] | None = None, *, download: bool = True
) -> FashionMNIST:
    """Load and verify Fashion-MNIST.

    Lookup order: ``data_dir``, else ``$JAXCNN_DATA`` (either one, when given, must hold all
    four files and is never written to); else the first complete directory of the user cache
    (:func:`default_cache_dir`) and Debian's ``/usr/share/datasets/fashion-mnist``. When neither
    is complete, the missing files are downloaded into the cache (from ``$JAXCNN_FASHION_MNIST_URL``
    or the upstream mirror) unless ``download`` is False. A corrupt cached file is re-downloaded
    when ``download`` is True. Every file is verified (magic, counts, size, SHA-256).

    Raises:
        DataError: nothing usable was found, or a file failed verification.
    """
    if data_dir is not None:
        directory = Path(data_dir).expanduser().absolute()
        return _load_user(directory, "the data_dir argument (--data-dir)")
    env = os.environ.get(DATA_ENV)
    if env:
        return _load_user(Path(env).expanduser().absolute(), f"${DATA_ENV}")
    cache = default_cache_dir()
    if _is_complete(cache):
        return _load_cache(cache, download)
    if _is_complete(SYSTEM_DIR):
        fix = (
            "Fix: reinstall the package (sudo apt-get install --reinstall dataset-fashion-mnist), "
            f"or pass --data-dir / set {DATA_ENV} to a directory with good copies."
        )
        return _assemble(_read_all(SYSTEM_DIR, fix), SYSTEM_DIR)
    if not download:
        raise DataError(
            f"Fashion-MNIST not found: no directory holds all four IDX files ({_file_list()}); "
            f"looked in the user cache {cache} and in {SYSTEM_DIR} (Debian's "
            f"dataset-fashion-mnist), and download=False. Fix: pass --data-dir DIR (data_dir=DIR) "
            f"or set {DATA_ENV}=DIR to a directory with the files; or `{_APT}`; or allow the "
            f"download into {cache} (download=True)."
        )
    return _load_cache(cache, download=True)


def split_sizes(limit_train: int | None = None, limit_test: int | None = None
                ) -> tuple[int, int]:
    """The numbers of training and test examples :func:`load_splits` returns with these limits
    (known before any file is read: the IDX headers are verified against them)."""
    counts = {spec.key: spec.count for spec in SPECS}
    return (min(limit_train or counts["train_images"], counts["train_images"]),
            min(limit_test or counts["test_images"], counts["test_images"]))


def load_splits(data_dir: str | os.PathLike[str] | None = None, *,
                limit_train: int | None = None, limit_test: int | None = None,
                download: bool = True) -> FashionMNIST:
    """:func:`load_fashion_mnist`, cut to the first ``limit_train`` training and ``limit_test``
    test examples (``None``: all): uint8 images ``(N, 28, 28)``, labels ``(N,)``. The one
    loader of every command; the resize happens per batch (:func:`preprocess`)."""
    fm = load_fashion_mnist(data_dir, download=download)
    return FashionMNIST(fm.train_images[:limit_train], fm.train_labels[:limit_train],
                        fm.test_images[:limit_test], fm.test_labels[:limit_test], fm.source)


def _read_all(directory: Path, fix: str) -> dict[str, np.ndarray]:
    arrays = {}
    for spec in SPECS:
        path = find_file(spec, directory)
        assert path is not None  # the caller checked that the directory is complete
        arrays[spec.key] = read_idx(path, spec, fix)
    return arrays


def _load_user(directory: Path, origin: str) -> FashionMNIST:
    """A user-chosen directory: all four files or an error; never modified."""
    if not directory.is_dir():
        raise DataError(
            f"{directory} (from {origin}): expected a directory with the Fashion-MNIST IDX files "
            f"({_file_list()}), but it does not exist. Fix: point it at such a directory (e.g. "
            f"{SYSTEM_DIR} after `{_APT}`), or leave it unset to use the cache (automatic "
            "download) or the Debian package."
        )
    missing = [spec for spec in SPECS if find_file(spec, directory) is None]
    if missing:
        names = ", ".join(str(directory / f"{spec.name}[.gz]") for spec in missing)
        raise DataError(
            f"{directory} (from {origin}): missing {names}; expected all four Fashion-MNIST IDX "
            f"files, plain or gzip. Fix: copy them there (e.g. from {SYSTEM_DIR} after `{_APT}`), "
            "or leave it unset to use the cache (automatic download) or the Debian package."
        )
    fix = (
        f"Fix: replace it with a good copy (e.g. from {SYSTEM_DIR}, `{_APT}`), or leave {origin} "
        "unset to use the cache (automatic download) or the Debian package; jaxcnn never "
        "overwrites a directory you chose."
    )
    return _assemble(_read_all(directory, fix), directory)


def _load_cache(cache: Path, download: bool) -> FashionMNIST:
    """The cache: verified files are used, missing or corrupt ones (re-)downloaded."""
    arrays = {}
    for spec in SPECS:
        path = find_file(spec, cache)
        if path is not None:
            fix = "Fix: delete it and load again with download=True to re-download it."
            try:
                arrays[spec.key] = read_idx(path, spec, fix)
                continue
            except DataError as err:
                if not download:
                    raise
                print(f"[jaxcnn] {err}\n[jaxcnn] re-downloading it", file=sys.stderr)
        try:
            arrays[spec.key] = _download(spec, cache)
        except DataError as err:
            if path is None:
                raise
            raise DataError(f"{path} is corrupt and re-downloading it failed: {err}") from err
        if path is not None and path != cache / f"{spec.name}.gz":
            path.unlink()  # the corrupt plain file would shadow the downloaded .gz
    return _assemble(arrays, cache)


def _download(spec: IdxSpec, cache: Path) -> np.ndarray:
    """Fetch ``<mirror>/<name>.gz``, verify it in memory, then write it to the cache atomically
    (temp file + rename); nothing is left behind on failure."""
    url = (os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/") + f"/{spec.name}.gz"
    dest = cache / f"{spec.name}.gz"
    offline_fix = (
        f"Fix: check the network or set {URL_ENV} to another mirror; offline, `{_APT}`, or pass "
        f"--data-dir / set {DATA_ENV} to a directory with the files."
    )
    print(f"[jaxcnn] downloading {url} -> {dest}", file=sys.stderr)
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
            raw = response.read()
    except (OSError, http.client.HTTPException, ValueError) as err:
        raise DataError(f"{url}: download of {spec.name}.gz failed ({err}). {offline_fix}") from err
    array = decode_idx(
        raw, spec, url, f"The mirror served a bad file; nothing was written to {cache}. "
        + offline_fix
    )
    try:
        cache.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{spec.name}.", suffix=".part", dir=cache)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(raw)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as err:
        raise DataError(
            f"{dest}: cannot write the downloaded file ({err}). Fix: make {cache} writable, set "
            f"XDG_CACHE_HOME elsewhere, or pass --data-dir / set {DATA_ENV}."
        ) from err
    return array
