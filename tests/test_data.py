"""jaxcnn.data: lookup, download, verification, batching, and torchvision-exact preprocessing.

Uses Debian's dataset-fashion-mnist files in /usr/share/datasets/fashion-mnist (installed by
scripts/setup.sh) and a loopback HTTP server for the download path.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcnn.data as data
from jaxcnn.data import _load

DEBIAN = Path("/usr/share/datasets/fashion-mnist")
NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
TEST_LABELS = NAMES["test_labels"]


def raw(name: str) -> bytes:
    """The decompressed contents of one Debian file."""
    return gzip.decompress((DEBIAN / f"{name}.gz").read_bytes())


def populate(directory: Path, **overrides: bytes | None) -> Path:
    """Symlink the Debian files into ``directory``; ``overrides`` (by name with '-' as '_')
    replace a file by these bytes (written as ``.gz`` when gzip, else plain) or drop it (None)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in NAMES.values():
        key = name.replace("-", "_")
        if key not in overrides:
            (directory / f"{name}.gz").symlink_to(DEBIAN / f"{name}.gz")
        elif (content := overrides[key]) is not None:
            suffix = ".gz" if content[:2] == b"\x1f\x8b" else ""
            (directory / f"{name}{suffix}").write_bytes(content)
    return directory


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[str]:
    """Serve ``directory`` on 127.0.0.1 (random port) from a thread; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No $JAXCNN_DATA, an empty cache under tmp_path, and a mirror URL that refuses to
    connect; returns the cache directory."""
    monkeypatch.delenv("JAXCNN_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("JAXCNN_FASHION_MNIST_URL", "http://127.0.0.1:9/")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    return tmp_path / "xdg" / "jaxcnn" / "fashion-mnist"


@pytest.fixture(scope="module")
def real() -> data.FashionMNIST:
    return data.load_fashion_mnist(DEBIAN, download=False)


def assert_same(a: data.FashionMNIST, b: data.FashionMNIST) -> None:
    for key in NAMES:
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))


# --- the real data ---------------------------------------------------------------------------


def test_real_data(real: data.FashionMNIST) -> None:
    assert real.source == str(DEBIAN)
    assert real.train_images.shape == (60000, 28, 28) and real.train_images.dtype == np.uint8
    assert real.test_images.shape == (10000, 28, 28) and real.test_images.dtype == np.uint8
    assert real.train_labels.shape == (60000,) and real.test_labels.shape == (10000,)
    assert real.train_labels.dtype == np.uint8 and real.test_labels.dtype == np.uint8
    assert np.bincount(real.train_labels, minlength=11).tolist() == [6000] * 10 + [0]
    assert np.bincount(real.test_labels, minlength=11).tolist() == [1000] * 10 + [0]
    assert real.train_images.max() == 255 and real.train_images.min() == 0
    assert not real.train_images.flags.writeable
    assert len(data.CLASSES) == 10 and data.CLASSES[9] == "ankle boot"


# --- lookup ----------------------------------------------------------------------------------


def test_search_order(tmp_path: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arg_dir = populate(tmp_path / "arg")
    env_dir = populate(tmp_path / "env")
    populate(isolated)
    monkeypatch.setenv("JAXCNN_DATA", str(env_dir))
    assert data.load_fashion_mnist(arg_dir, download=False).source == str(arg_dir)
    assert data.load_fashion_mnist(download=False).source == str(env_dir)
    monkeypatch.delenv("JAXCNN_DATA")
    assert data.load_fashion_mnist(download=False).source == str(isolated)
    (isolated / f"{TEST_LABELS}.gz").unlink()  # an incomplete cache is skipped
    assert data.load_fashion_mnist(download=False).source == str(DEBIAN)


def test_xdg_cache_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert data.default_cache_dir() == tmp_path / "xdg" / "jaxcnn" / "fashion-mnist"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.default_cache_dir() == tmp_path / "home" / ".cache" / "jaxcnn" / "fashion-mnist"


def test_plain_and_gzip(tmp_path: Path, real: data.FashionMNIST) -> None:
    plain = {n.replace("-", "_"): raw(n) for n in (NAMES["test_images"], NAMES["train_labels"])}
    directory = populate(tmp_path / "mixed", **plain)
    assert sorted(p.name for p in directory.iterdir() if p.suffix != ".gz") == [
        "t10k-images-idx3-ubyte", "train-labels-idx1-ubyte"]
    assert_same(data.load_fashion_mnist(directory), real)


# --- verification ----------------------------------------------------------------------------


def _patched(name: str, offset: int, value: bytes) -> bytes:
    content = bytearray(raw(name))
    content[offset:offset + len(value)] = value
    return bytes(content)


CORRUPTIONS = {
    "wrong magic": (TEST_LABELS, lambda: _patched(TEST_LABELS, 0, (2051).to_bytes(4, "big")),
                    ["expected IDX magic number 2049 (labels), found 2051"]),
    "truncated plain": (TEST_LABELS, lambda: raw(TEST_LABELS)[:-100],
                        ["header promises 10008 bytes, found 9908 bytes (truncated)"]),
    "truncated gzip": (TEST_LABELS, lambda: (DEBIAN / f"{TEST_LABELS}.gz").read_bytes()[:2000],
                       ["gzip stream is truncated or corrupt"]),
    "flipped byte": (TEST_LABELS, lambda: _patched(TEST_LABELS, 5000, bytes([raw(TEST_LABELS)[
        5000] ^ 1])), ["SHA-256 of the decompressed contents is", "expected 0402a96d"]),
    "wrong count": (TEST_LABELS, lambda: _patched(TEST_LABELS, 4, (9999).to_bytes(4, "big"))[
        :-1], ["expected 10000 labels in the header, found 9999"]),
    "wrong image size": ("t10k-images-idx3-ubyte", lambda: _patched(
        "t10k-images-idx3-ubyte", 8, (27).to_bytes(4, "big")),
        ["expected 28x28 images, header says 27x28"]),
    "trailing bytes": (TEST_LABELS, lambda: raw(TEST_LABELS) + b"\0",
                       ["found 10009 bytes (trailing bytes)"]),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corrupt_file_in_user_dir(case: str, tmp_path: Path) -> None:
    name, make, expected = CORRUPTIONS[case]
    content = make()
    directory = populate(tmp_path / "user", **{name.replace("-", "_"): content})
    path = directory / (f"{name}.gz" if content[:2] == b"\x1f\x8b" else name)
    with pytest.raises(data.DataError) as info:
        data.load_fashion_mnist(directory)
    message = str(info.value)
    assert message.startswith(f"{path}: not a valid Fashion-MNIST")
    for fragment in [*expected, "Fix: replace it with a good copy", "never overwrites"]:
        assert fragment in message
    assert path.read_bytes() == content  # a user directory is never modified


def test_missing_file(tmp_path: Path) -> None:
    directory = populate(tmp_path / "user", t10k_labels_idx1_ubyte=None)
    with pytest.raises(data.DataError) as info:
        data.load_fashion_mnist(directory)
    message = str(info.value)
    assert f"missing {directory / TEST_LABELS}[.gz]" in message
    assert "train-images" not in message.split("; expected")[0]
    assert "apt-get install dataset-fashion-mnist" in message
    with pytest.raises(data.DataError, match="does not exist"):
        data.load_fashion_mnist(tmp_path / "nowhere")


def test_nothing_found_without_download(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(_load, "SYSTEM_DIR", tmp_path / "no-debian")
    with pytest.raises(data.DataError) as info:
        data.load_fashion_mnist(download=False)
    message = str(info.value)
    for fragment in ["--data-dir", "JAXCNN_DATA", "apt-get install dataset-fashion-mnist",
                     "download=False", str(tmp_path / "no-debian"), "train-images-idx3-ubyte"]:
        assert fragment in message


# --- download --------------------------------------------------------------------------------


def test_download_into_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, isolated: Path,
                             real: data.FashionMNIST) -> None:
    monkeypatch.setattr(_load, "SYSTEM_DIR", tmp_path / "no-debian")
    with serve(populate(tmp_path / "mirror")) as url:
        monkeypatch.setenv("JAXCNN_FASHION_MNIST_URL", url)
        fm = data.load_fashion_mnist()
    assert fm.source == str(isolated)
    assert sorted(p.name for p in isolated.iterdir()) == sorted(f"{n}.gz" for n in NAMES.values())
    assert_same(fm, real)
    assert_same(data.load_fashion_mnist(download=False), real)  # served from the cache now


def test_download_of_corrupt_file_leaves_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, isolated: Path
) -> None:
    monkeypatch.setattr(_load, "SYSTEM_DIR", tmp_path / "no-debian")
    bad = gzip.compress(_patched(TEST_LABELS, 5000, b"\x07"))
    with serve(populate(tmp_path / "mirror", t10k_labels_idx1_ubyte=bad)) as url:
        monkeypatch.setenv("JAXCNN_FASHION_MNIST_URL", url)
        with pytest.raises(data.DataError) as info:
            data.load_fashion_mnist()
    message = str(info.value)
    assert message.startswith(f"{url}{TEST_LABELS}.gz: not a valid")
    assert "SHA-256" in message and "nothing was written" in message
    assert not isolated.exists() or list(isolated.iterdir()) == []


def test_download_http_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(_load, "SYSTEM_DIR", tmp_path / "no-debian")
    with serve(populate(tmp_path / "mirror", t10k_labels_idx1_ubyte=None)) as url:
        monkeypatch.setenv("JAXCNN_FASHION_MNIST_URL", url)
        with pytest.raises(data.DataError, match=r"download of t10k-labels.*HTTP Error 404"):
            data.load_fashion_mnist()


def test_corrupt_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, isolated: Path,
                       real: data.FashionMNIST) -> None:
    corrupt = _patched(TEST_LABELS, 5000, b"\x07")
    populate(isolated, t10k_labels_idx1_ubyte=corrupt)
    with pytest.raises(data.DataError, match="Fix: delete it and load again with download=True"):
        data.load_fashion_mnist(download=False)
    assert (isolated / TEST_LABELS).read_bytes() == corrupt
    with serve(populate(tmp_path / "mirror")) as url:
        monkeypatch.setenv("JAXCNN_FASHION_MNIST_URL", url)
        assert_same(data.load_fashion_mnist(), real)  # the cache repairs itself
    assert not (isolated / TEST_LABELS).exists() and (isolated / f"{TEST_LABELS}.gz").is_file()


# --- batching --------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "batch_size", "count", "last"), [
    (5000, 500, 10, 500), (60000, 256, 235, 96), (10000, 256, 40, 16), (10000, 128, 79, 16),
    (60000, 64, 938, 32), (1, 256, 1, 1), (0, 4, 0, None),
])
def test_num_batches_and_slices(n: int, batch_size: int, count: int, last: int | None) -> None:
    assert data.num_batches(n, batch_size) == count
    slices = data.batch_slices(n, batch_size)
    assert len(slices) == count
    assert [a for a, _ in slices] == list(range(0, n, batch_size))
    assert all(stop - start == batch_size for start, stop in slices[:-1])
    if last is not None:
        assert slices[-1][1] - slices[-1][0] == last and slices[-1][1] == n


def test_epoch_order() -> None:
    order = data.epoch_order(0, 0, 60000)
    assert order.shape == (60000,) and np.array_equal(np.sort(order), np.arange(60000))
    np.testing.assert_array_equal(order, data.epoch_order(0, 0, 60000))
    assert not np.array_equal(order, data.epoch_order(0, 1, 60000))
    assert not np.array_equal(order, data.epoch_order(1, 0, 60000))
    assert not np.array_equal(data.epoch_order(0, 1, 100), data.epoch_order(1, 0, 100))
    assert not np.array_equal(order, np.arange(60000))


@pytest.mark.parametrize("shuffle", [False, True])
def test_device_dataset_batches(shuffle: bool) -> None:
    n, batch_size = 1000, 256
    index = np.arange(n)
    images = np.stack([(index >> 8) % 256, index % 256], axis=-1).astype(np.uint8)[:, None, :]
    ds = data.DeviceDataset.from_arrays(np.broadcast_to(images, (n, 3, 2)), index % 10)
    assert len(ds) == n and ds.images.dtype == jnp.uint8 and ds.labels.dtype == jnp.int32
    batches = list(ds.batches(batch_size, shuffle=shuffle, seed=3, epoch=2))
    assert [x.shape for x, _ in batches] == [(256, 3, 2)] * 3 + [(232, 3, 2)]
    assert all(y.dtype == jnp.int32 and y.shape == x.shape[:1] for x, y in batches)
    seen = np.concatenate([np.asarray(x)[:, 0, 0].astype(int) * 256 + np.asarray(x)[:, 0, 1]
                           for x, _ in batches])
    labels = np.concatenate([np.asarray(y) for _, y in batches])
    np.testing.assert_array_equal(labels, seen % 10)
    expected = data.epoch_order(3, 2, n) if shuffle else index
    np.testing.assert_array_equal(seen, expected)


def test_device_dataset_splits(real: data.FashionMNIST) -> None:
    train, test = data.DeviceDataset.splits(real)
    assert (len(train), len(test)) == (60000, 10000)
    np.testing.assert_array_equal(np.asarray(test.images[:5]), real.test_images[:5])
    np.testing.assert_array_equal(np.asarray(train.labels), real.train_labels.astype(np.int32))


# --- preprocessing ---------------------------------------------------------------------------


def _torchvision(images: np.ndarray, resize: int | None) -> np.ndarray:
    """torchvision's [Resize(resize)] + ToTensor on PIL images, as NHWC float32."""
    from PIL import Image
    from torchvision import transforms

    steps = ([transforms.Resize(resize)] if resize else []) + [transforms.ToTensor()]
    transform = transforms.Compose(steps)
    return np.stack([transform(Image.fromarray(a)).numpy() for a in images]).transpose(0, 2, 3, 1)


@pytest.mark.parametrize("resize", [None, 224, 14])
def test_preprocess_matches_torchvision(real: data.FashionMNIST, resize: int | None) -> None:
    images = np.concatenate([real.train_images[:32], real.test_images[-32:]])
    expected = _torchvision(images, resize)
    step = jax.jit(lambda x: data.preprocess(x, resize) * 2.0)  # as inside a training step
    out = np.asarray(step(jnp.asarray(images))) / 2.0
    size = resize or 28
    assert out.shape == (64, size, size, 1) and out.dtype == np.float32
    assert np.abs(out - expected).max() <= 1 / 255 + 1e-6
    n_diff = int(np.count_nonzero(out != expected))
    assert n_diff == 0, f"{n_diff} of {out.size} pixels differ from torchvision"


def test_preprocess_rejects_bad_input() -> None:
    with pytest.raises(TypeError, match="uint8"):
        data.preprocess(jnp.zeros((2, 28, 28), jnp.float32))
    with pytest.raises(ValueError, match="square"):
        data.preprocess(jnp.zeros((2, 28, 27), jnp.uint8), 224)
