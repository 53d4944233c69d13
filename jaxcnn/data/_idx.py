"""The four Fashion-MNIST IDX files: their names, expected headers and digests, and a verifying
reader (gzip or plain).

Every check runs on the decompressed bytes, so Debian's re-compressed ``.gz`` files, the
upstream downloads and decompressed copies all verify against the same SHA-256 digests.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import zlib
from pathlib import Path

import numpy as np

IMAGE_MAGIC = 2051  # IDX: unsigned bytes, 3 dimensions (count, rows, cols)
LABEL_MAGIC = 2049  # IDX: unsigned bytes, 1 dimension (count)
IMAGE_SIZE = 28
_GZIP_MAGIC = b"\x1f\x8b"


class DataError(Exception):
    """A data problem; the message names the file, what was expected and found, and the fix."""


@dataclasses.dataclass(frozen=True)
class IdxSpec:
    """One IDX file: ``key`` is the :class:`FashionMNIST` field it fills, ``name`` the file name
    without ``.gz``, ``sha256`` the digest of the decompressed file."""

    key: str
    name: str
    magic: int
    count: int
    sha256: str

    @property
    def kind(self) -> str:
        return "images" if self.magic == IMAGE_MAGIC else "labels"

    @property
    def header_bytes(self) -> int:
        return 16 if self.magic == IMAGE_MAGIC else 8

    @property
    def item_bytes(self) -> int:
        return IMAGE_SIZE * IMAGE_SIZE if self.magic == IMAGE_MAGIC else 1

    @property
    def nbytes(self) -> int:
        """Length of the decompressed file."""
        return self.header_bytes + self.count * self.item_bytes

    def candidates(self, directory: Path) -> tuple[Path, Path]:
        """The accepted file names in ``directory``: plain first, then gzip."""
        return directory / self.name, directory / f"{self.name}.gz"


# Ordered small to large so that a broken small file is reported before hashing 47 MB.
SPECS: tuple[IdxSpec, ...] = (
    IdxSpec("test_labels", "t10k-labels-idx1-ubyte", LABEL_MAGIC, 10_000,
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
    IdxSpec("train_labels", "train-labels-idx1-ubyte", LABEL_MAGIC, 60_000,
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    IdxSpec("test_images", "t10k-images-idx3-ubyte", IMAGE_MAGIC, 10_000,
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    IdxSpec("train_images", "train-images-idx3-ubyte", IMAGE_MAGIC, 60_000,
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
)


def find_file(spec: IdxSpec, directory: Path) -> Path | None:
    """The first existing accepted name of ``spec`` in ``directory``, else None."""
    for path in spec.candidates(directory):
        if path.is_file():
            return path
    return None


def read_idx(path: str | os.PathLike[str], spec: IdxSpec, fix: str) -> np.ndarray:
    """Read and verify one IDX file (gzip or plain, detected from its content).

    Returns a read-only uint8 array: images ``(count, 28, 28)`` or labels ``(count,)``.
    Raises :class:`DataError` naming ``path``, the mismatch, and ``fix`` (how to repair it).
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read {spec.name} ({err}). {fix}") from err
    return decode_idx(raw, spec, str(path), fix)


def decode_idx(raw: bytes, spec: IdxSpec, where: str, fix: str) -> np.ndarray:
    """Verify and decode the bytes of one IDX file (see :func:`read_idx`); ``where`` names them
    in error messages."""

    def fail(problem: str) -> DataError:
        return DataError(
            f"{where}: not a valid Fashion-MNIST {spec.key.replace('_', ' ')} file "
            f"({spec.name}): {problem}. {fix}"
        )

    if raw[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise fail(f"the gzip stream is truncated or corrupt ({err})") from err
    else:
        data = raw
    if len(data) < spec.header_bytes:
        raise fail(
            f"expected a {spec.header_bytes}-byte IDX header and {spec.nbytes} bytes in all, "
            f"found only {len(data)} bytes (truncated)"
        )
    header = np.frombuffer(data, ">u4", count=spec.header_bytes // 4)
    magic, count = int(header[0]), int(header[1])
    if magic != spec.magic:
        other = {IMAGE_MAGIC: " (an images file)", LABEL_MAGIC: " (a labels file)"}.get(magic, "")
        raise fail(
            f"expected IDX magic number {spec.magic} ({spec.kind}), found {magic}{other}"
        )
    if count != spec.count:
        raise fail(f"expected {spec.count} {spec.kind} in the header, found {count}")
    if spec.magic == IMAGE_MAGIC:
        rows, cols = int(header[2]), int(header[3])
        if (rows, cols) != (IMAGE_SIZE, IMAGE_SIZE):
            raise fail(f"expected {IMAGE_SIZE}x{IMAGE_SIZE} images, header says {rows}x{cols}")
    if len(data) != spec.nbytes:
        state = "truncated" if len(data) < spec.nbytes else "trailing bytes"
        raise fail(
            f"the header promises {spec.nbytes} bytes, found {len(data)} bytes ({state})"
        )
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.sha256:
        raise fail(
            f"SHA-256 of the decompressed contents is {digest}, expected {spec.sha256} "
            "(the contents are corrupt or modified)"
        )
    array = np.frombuffer(data, np.uint8, offset=spec.header_bytes)
    if spec.magic == IMAGE_MAGIC:
        array = array.reshape(spec.count, IMAGE_SIZE, IMAGE_SIZE)
    return array
