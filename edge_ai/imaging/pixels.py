"""DICOM pixels -> model input tensor. Pure functions: no file or network I/O.

The pipeline (`preprocess`) is the one the demo models were trained with, so serving and
training see identical tensors:

1. `decode`: stored values of one frame (pydicom; pylibjpeg plugins for compressed syntaxes).
2. `modality_lut`: Rescale Slope/Intercept or a Modality LUT (CT -> HU).
3. `window`: VOI window to 0..1 (dataset Window Center/Width, a fixed window, or percentiles),
   linear, clipped.
4. MONOCHROME1 inverted (1 - x), so bright always means dense.
5. `resize`: bilinear to the model's rows x columns (aspect not kept, so box coordinates in 0..1
   map 1:1 onto the source frame), antialiased when shrinking (triangle filter widened by the
   scale factor, as PIL/torch `antialias=True` do).
6. (x - mean) / std, float32 [1, H, W].

For a frame of a million pixels or more (DX, CR, MG) of 8- or 16-bit stored values, steps 2-4 are
computed once per possible stored value and looked up per pixel (`_table`): the same numbers, bit for
bit, in one pass instead of five. The resize multiplies only the band of its weight matrix around each
output row (`_resize_bands`), and such a frame's rows are looked up band by band as the resize reads
them (`_resize_rows_through`), so no frame-sized float array is made. A 2048 x 2048 DX: 100 -> 25 ms
on one core (-> ~19 ms looking up by band). Smaller frames (a CT slice) compute steps 2-4 in place
in a buffer each thread reuses. Every path gives the numbers of the plain step-by-step computation.

Multi-frame images: `preprocess` uses ONE frame (`frame`, default the first);
`preprocess_frames` returns every frame as [F, 1, H, W] (the whole volume decoded: for tests and
training scripts). The node reads and decodes one frame at a time (`imaging.frames`) and gives each
frame's stored values to `preprocess_stored`.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_modality_lut

from edge_ai.errors import ImagingError
from edge_ai.inference.package import Preprocessing, Window

__all__ = [
    "MAX_PIXELS",
    "decode",
    "frame_count",
    "frame_item",
    "mask_unused_bits",
    "modality_lut",
    "native_dtype",
    "preprocess",
    "preprocess_frames",
    "preprocess_native",
    "preprocess_stored",
    "resize",
    "stack",
    "window",
]

MAX_PIXELS = 256 * 1024 * 1024  # pixels of one decode (the whole image in `decode`, one frame in `preprocess_stored`)


def frame_count(ds: Dataset) -> int:
    """Number of frames (1 when Number of Frames is absent or empty)."""
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError) as exc:
        raise ImagingError(f"invalid Number of Frames: {ds.get('NumberOfFrames')!r}") from exc


def _check_geometry(ds: Dataset, max_pixels: int, *, header_only: bool = False) -> None:
    if not header_only and "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImagingError("dataset has no pixel data")
    samples = int(ds.get("SamplesPerPixel") or 1)
    if samples != 1:
        raise ImagingError(
            f"multi-sample (colour) images are not supported: Samples per Pixel {samples}, "
            f"Photometric Interpretation {ds.get('PhotometricInterpretation', '?')}"
        )
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImagingError(f"Photometric Interpretation {photometric} is not supported")
    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if rows < 1 or cols < 1:
        raise ImagingError(f"invalid image size {rows} x {cols}")
    if rows * cols * frame_count(ds) > max_pixels:
        raise ImagingError(
            f"image too large: {rows} x {cols} x {frame_count(ds)} frames exceeds {max_pixels}"
        )


def decode(ds: Dataset, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Stored pixel values: [rows, columns] for one frame, [frames, rows, columns] for several.

    Raises:
        ImagingError: no/corrupt/truncated pixel data, an unsupported transfer syntax (no decoder),
            colour data, or more than `max_pixels` pixels.
    """
    _check_geometry(ds, max_pixels)
    try:
        arr = ds.pixel_array
    except (KeyboardInterrupt, SystemExit):
        raise
    # pydicom raises many types for bad data; all mean "cannot decode". BaseException: the Rust RLE
    # decoder (pylibjpeg-rle) panics on corrupt segments, and pyo3's PanicException is not an Exception.
    except BaseException as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", syntax) or "unknown transfer syntax"
        raise ImagingError(f"cannot decode pixel data ({name}): {type(exc).__name__}: {exc}") from exc
    arr = np.asarray(arr)
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise ImagingError(f"unexpected decoded pixel array shape {arr.shape}")
    return arr


# Uncompressed little-endian syntaxes: Pixel Data is the stored values as they lie in memory
_NATIVE_SYNTAXES = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"})
_NATIVE_TYPES = {(8, 0): "<u1", (8, 1): "<i1", (16, 0): "<u2", (16, 1): "<i2", (32, 0): "<u4", (32, 1): "<i4"}


def native_dtype(ds: Dataset) -> np.dtype | None:
    """The dtype of a single-frame, uncompressed, little-endian greyscale Pixel Data; else None.

    For these, `preprocess_native` on the raw bytes gives what `preprocess` gives through
    pydicom's decoder, without pydicom parsing the data set a second time (the worker already
    holds the header). Everything else (None) goes through `preprocess`.
    """
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
    try:
        key = (int(ds.get("BitsAllocated") or 0), int(ds.get("PixelRepresentation") or 0))
        single = int(ds.get("SamplesPerPixel") or 1) == 1 and frame_count(ds) == 1
    except (TypeError, ValueError, ImagingError):
        return None
    if syntax not in _NATIVE_SYNTAXES or not single or key not in _NATIVE_TYPES:
        return None
    return np.dtype(_NATIVE_TYPES[key])


def preprocess_native(
    ds: Dataset, raw: np.ndarray, spec: Preprocessing, *, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """`preprocess` for a header (`ds`, no Pixel Data needed) and its raw stored values.

    Args:
        ds: the instance's header; `native_dtype(ds)` must not be None.
        raw: 1-D array of `native_dtype(ds)` holding at least Rows x Columns values (the
            Pixel Data value as stored; trailing padding is ignored).

    Raises:
        ImagingError: as `preprocess` (geometry, photometric), or too few values.
    """
    _check_geometry(ds, max_pixels, header_only=True)
    rows, cols = int(ds.Rows), int(ds.Columns)
    if raw.ndim != 1 or raw.size < rows * cols:
        raise ImagingError(f"pixel data holds {raw.size} values, {rows} x {cols} expected")
    return _one_frame(ds, mask_unused_bits(raw[: rows * cols].reshape(rows, cols), ds), spec, 0)


def mask_unused_bits(stored: np.ndarray, ds: Dataset) -> np.ndarray:
    """As pydicom does: the high bits above Bits Stored are ignored (masked, or sign-extended when signed)."""
    bits_allocated, bits_stored = int(ds.BitsAllocated), int(ds.get("BitsStored") or ds.BitsAllocated)
    if 0 < bits_stored < bits_allocated:
        shift = bits_allocated - bits_stored
        out: np.ndarray = np.left_shift(stored, shift)
        np.right_shift(out, shift, out=out)  # in place: one frame-sized array, not two
        return out
    return stored


def preprocess_stored(
    ds: Dataset, stored: np.ndarray, spec: Preprocessing, *, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """`preprocess` for one frame's stored values [rows, columns] already decoded (`frames.stored_frame`).

    Args:
        ds: the frame's header (`frames.frame_header`): pixel module, rescale and window of that frame.

    Raises:
        ImagingError: as `preprocess` (geometry, photometric), or values of the wrong shape.
    """
    _check_geometry(ds, max_pixels, header_only=True)
    if stored.shape != (int(ds.Rows), int(ds.Columns)):
        raise ImagingError(f"frame holds {stored.shape} values, {ds.Rows} x {ds.Columns} expected")
    return _one_frame(ds, stored, spec, 0)


def frame_item(ds: Dataset, sequence: str, frame: int, keyword: str) -> Any:
    """The item of `sequence` holding `keyword` for `frame` (0-based) in the Enhanced (multi-frame)
    functional groups: the Per-frame one, else the Shared one; None when neither has it."""
    for group_seq, index in (
        ("PerFrameFunctionalGroupsSequence", frame),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        groups = ds.get(group_seq)
        if groups and len(groups) > index:
            inner = groups[index].get(sequence)
            if inner and keyword in inner[0]:
                return inner[0]
    return None


def modality_lut(arr: np.ndarray, ds: Dataset, *, frame: int = 0, out: np.ndarray | None = None) -> np.ndarray:
    """Stored values -> modality values (HU for CT) as float32, for one frame's array.

    Args:
        out: a float32 array of `arr`'s shape a linear rescale (or none) is written into, the same numbers
            as without it; a Modality LUT ignores it.
    """
    try:
        if "RescaleSlope" in ds and "ModalityLUTSequence" not in ds:
            # the common linear rescale, in float32 (pydicom's path works in float64: twice the work)
            slope = np.float32(float(ds.RescaleSlope))
            intercept = np.float32(float(ds.get("RescaleIntercept", 0) or 0))
            if out is None:
                return arr.astype(np.float32) * slope + intercept
            np.copyto(out, arr, casting="unsafe")
            np.multiply(out, slope, out=out)
            np.add(out, intercept, out=out)
            return out
        if "RescaleSlope" in ds or "ModalityLUTSequence" in ds:
            result = apply_modality_lut(arr, ds)
        else:
            item = frame_item(ds, "PixelValueTransformationSequence", frame, "RescaleSlope")
            if item is None and out is not None:  # no rescale (MR): the stored values as they are
                np.copyto(out, arr, casting="unsafe")
                return out
            result = arr if item is None else apply_modality_lut(arr, item)
    except Exception as exc:  # malformed LUT / rescale values
        raise ImagingError(f"cannot apply modality LUT: {exc}") from exc
    return np.asarray(result, dtype=np.float32)


def _first(value: Any) -> float:
    if value is None or value == "":
        raise ValueError("empty")
    if isinstance(value, str | bytes) or not hasattr(value, "__len__"):
        return float(value)
    return float(value[0])


def _dataset_window(ds: Dataset, frame: int) -> tuple[float, float] | None:
    source: Any = ds
    if "WindowCenter" not in ds:
        source = frame_item(ds, "FrameVOILUTSequence", frame, "WindowCenter")
        if source is None:
            return None
    try:
        centre, width = _first(source.get("WindowCenter")), _first(source.get("WindowWidth"))
    except (TypeError, ValueError):
        return None
    return (centre, width) if width > 0 else None


def window(values: np.ndarray, spec: Window, ds: Dataset | None = None, *, frame: int = 0,
           counts: Callable[[], np.ndarray] | None = None, in_place: bool = False) -> np.ndarray:
    """Modality values -> 0..1 through a linear window; values outside it are clipped.

    `dataset` uses the instance's first Window Center/Width and falls back to `percentile`
    when it has none; `fixed` uses spec.center/width; `percentile` maps the given
    percentiles of the image to 0 and 1.

    Args:
        counts: when given, `values` is a table (every value a stored pixel can take) and `counts()`
            how many pixels hold each: the percentiles are those of the image the table maps.
        in_place: `values` (float32, writable, the caller's to spend) is overwritten with the result:
            the same numbers without two frame-sized allocations.
    """
    centre_width: tuple[float, float] | None = None
    if spec.source == "fixed":
        if spec.center is None or spec.width is None or spec.width <= 0:
            raise ValueError("a fixed window needs center and a positive width")
        centre_width = (spec.center, spec.width)
    elif spec.source == "dataset" and ds is not None:
        centre_width = _dataset_window(ds, frame)
    if centre_width is None:
        found = np.percentile(values, spec.percentiles) if counts is None else _percentiles(
            values, counts(), spec.percentiles)
        lo, hi = (float(v) for v in found)
        if hi <= lo:
            hi = lo + 1.0
    else:
        lo = centre_width[0] - centre_width[1] / 2.0
        hi = lo + centre_width[1]
    if in_place and values.dtype == np.float32 and values.flags.writeable:
        np.subtract(values, np.float32(lo), out=values)
        np.divide(values, np.float32(hi - lo), out=values)
        return np.clip(values, 0.0, 1.0, out=values)
    out = (values.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo)
    return np.asarray(np.clip(out, 0.0, 1.0), dtype=np.float32)


@functools.lru_cache(maxsize=64)
def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] weights of (antialiased) bilinear interpolation with pixel-centre alignment."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    centres = (np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5
    src = np.arange(n_in, dtype=np.float64)
    w = np.clip(1.0 - np.abs(src[None, :] - centres[:, None]) / support, 0.0, None)
    if scale < 1.0:  # upsampling: clamp at the borders like ordinary bilinear
        edge = np.clip(centres, 0, n_in - 1)
        w = np.clip(1.0 - np.abs(src[None, :] - edge[:, None]), 0.0, None)
    w /= w.sum(axis=1, keepdims=True)
    out = w.astype(np.float32)
    out.flags.writeable = False  # cached and shared between calls
    return out


_BAND_ROWS = 32  # output rows per block of a banded resize


@functools.lru_cache(maxsize=64)
def _resize_bands(n_in: int, n_out: int) -> tuple[tuple[int, int, int, int, np.ndarray], ...]:
    """`_resize_matrix` cut into blocks of output rows, each with the input rows it reads (out0, out1,
    in0, in1, weights): each output takes a few inputs around its centre, so multiplying the blocks
    skips the zeros of the whole matrix (2048 -> 256: 1/8 of the products)."""
    matrix = _resize_matrix(n_in, n_out)
    bands = []
    for out0 in range(0, n_out, _BAND_ROWS):
        out1 = min(n_out, out0 + _BAND_ROWS)
        used = np.flatnonzero(matrix[out0:out1].any(axis=0))
        in0, in1 = int(used[0]), int(used[-1]) + 1
        block = np.ascontiguousarray(matrix[out0:out1, in0:in1])
        block.flags.writeable = False
        bands.append((out0, out1, in0, in1, block))
    return tuple(bands)


def _resize_rows(image: np.ndarray, n_out: int) -> np.ndarray:
    """`_resize_matrix(rows, n_out) @ image`, block by block over its band."""
    out = np.empty((n_out, image.shape[1]), dtype=np.float32)
    for out0, out1, in0, in1, block in _resize_bands(image.shape[0], n_out):
        np.matmul(block, image[in0:in1], out=out[out0:out1])
    return out


def _resize_columns(image: np.ndarray, n_out: int) -> np.ndarray:
    """`image @ _resize_matrix(columns, n_out).T`, block by block over its band."""
    out = np.empty((image.shape[0], n_out), dtype=np.float32)
    for out0, out1, in0, in1, block in _resize_bands(image.shape[1], n_out):
        np.matmul(image[:, in0:in1], block.T, out=out[:, out0:out1])
    return out


def resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D image to (rows, columns); antialiased when shrinking."""
    if image.ndim != 2:
        raise ValueError(f"resize takes a 2-D image, got shape {image.shape}")
    rows, cols = int(shape[0]), int(shape[1])
    if rows < 1 or cols < 1:
        raise ValueError(f"invalid target shape {shape}")
    img = image.astype(np.float32, copy=False)
    if img.shape != (rows, cols):
        img = _resize_columns(_resize_rows(img, rows), cols)
    return np.ascontiguousarray(img, dtype=np.float32)


# A frame at least this big maps its stored values through a table (DX, CR, MG: 4-9 megapixels); smaller
# ones (a CT slice) are cheaper computed pixel by pixel than building a table of 65,536 values
_TABLE_MIN_PIXELS = 1 << 20
_COUNT_CHUNK = 1 << 18  # pixels counted per np.bincount call: its intp copy stays in cache


def _table(ds: Dataset, stored: np.ndarray, spec: Preprocessing, frame: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Steps 2-4 (`modality_lut`, `window`, MONOCHROME1) of a frame of 8- or 16-bit integers as a table of
    every value a stored pixel can take, and the frame's stored values as indexes into it: looked up, the
    very numbers of computing them pixel by pixel (the same element-wise float32 operations on the same
    values), in one pass over a multi-megapixel frame instead of five; percentiles come from the frame's
    histogram. None: another type, or a frame too small for a table to pay."""
    if stored.dtype.kind not in "iu" or stored.dtype.itemsize > 2 or stored.size < _TABLE_MIN_PIXELS:
        return None
    unsigned = stored.view(np.dtype(f"u{stored.dtype.itemsize}"))  # stored value -> its table index
    domain = np.arange(1 << (8 * stored.dtype.itemsize), dtype=unsigned.dtype).view(stored.dtype)

    def counts() -> np.ndarray:
        flat, total = unsigned.reshape(-1), np.zeros(domain.size, dtype=np.intp)
        for start in range(0, flat.size, _COUNT_CHUNK):
            total += np.bincount(flat[start:start + _COUNT_CHUNK], minlength=domain.size)
        return total

    table = window(modality_lut(domain, ds, frame=frame), spec.window, ds, frame=frame, counts=counts)
    if spec.invert_monochrome1 and str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        table = 1.0 - table
    return np.asarray(table, dtype=np.float32), unsigned


def _resize_rows_through(table: np.ndarray, index: np.ndarray, n_out: int) -> np.ndarray:
    """`_resize_rows(table[index], n_out)` without the looked-up frame: each band's input rows are looked
    up into this thread's buffer just before they are multiplied (the same operands, so the same numbers;
    a 2048 x 2048 DX: no 16 MB array per image, and the rows read while they are in cache)."""
    rows, cols = index.shape
    bands = _resize_bands(rows, n_out)
    buf = _scratch_floats(max(in1 - in0 for _, _, in0, in1, _ in bands) * cols)
    out = np.empty((n_out, cols), dtype=np.float32)
    for out0, out1, in0, in1, block in bands:
        band = buf[:(in1 - in0) * cols].reshape(in1 - in0, cols)
        np.take(table, index[in0:in1], out=band, mode="clip")  # every index is in the table
        np.matmul(block, band, out=out[out0:out1])
    return out


def _percentiles(table: np.ndarray, counts: np.ndarray, percentiles: Sequence[float]) -> np.ndarray:
    """`np.percentile` (linear method) of the image holding `counts[i]` pixels of value `table[i]`:
    the same order statistics, interpolated with numpy's own arithmetic."""
    present = counts > 0
    values, weights = table[present], counts[present]
    order = np.argsort(values, kind="stable")
    values, ends = values[order], np.cumsum(weights[order])  # ends[k]: pixels up to value k
    n = int(ends[-1])
    q = np.true_divide(np.asarray(percentiles, dtype=np.float64), 100)
    virtual = n * q + (1 + q * (1 - 1 - 1)) - 1  # numpy's virtual index, alpha = beta = 1
    previous = np.floor(virtual)
    lower = np.clip(previous, 0, n - 1).astype(np.intp)
    upper = np.clip(previous + 1, 0, n - 1).astype(np.intp)
    upper[virtual >= n - 1] = lower[virtual >= n - 1] = n - 1
    a = values[np.searchsorted(ends, lower, side="right")]
    b = values[np.searchsorted(ends, upper, side="right")]
    gamma = np.asanyarray(virtual - previous, dtype=virtual.dtype)
    diff = b - a
    out: np.ndarray = np.add(a, diff * gamma)
    np.subtract(b, diff * (1 - gamma), out=out, where=gamma >= 0.5, casting="unsafe")
    return out


_scratch = threading.local()  # per thread: the float32 buffer its frames' steps 2-4 reuse
# floats (4 MB) a thread keeps: a CT slice under a table's size, a 2048-wide DX's widest band (2.1 MB);
# what needs more (a mammogram's bands, a big frame of 32-bit values) gets a buffer of its own
_SCRATCH_MAX = _TABLE_MIN_PIXELS


def _scratch_floats(size: int) -> np.ndarray:
    """`size` floats of this thread's buffer (their contents are garbage), grown as needed up to
    `_SCRATCH_MAX`; beyond it a new array that is not kept."""
    if size > _SCRATCH_MAX:
        return np.empty(size, dtype=np.float32)
    buf: np.ndarray | None = getattr(_scratch, "buf", None)
    if buf is None or buf.size < size:
        buf = _scratch.buf = np.empty(size, dtype=np.float32)
    return buf[:size]


def _one_frame(ds: Dataset, stored: np.ndarray, spec: Preprocessing, frame: int) -> np.ndarray:
    shape = (spec.resize[0], spec.resize[1])
    mapped = _table(ds, stored, spec, frame)
    if mapped is not None and stored.shape != shape:
        # a DX, CR or MG: the rows looked up band by band into the resize (no frame-sized float array)
        x = _resize_columns(_resize_rows_through(*mapped, shape[0]), shape[1])
    elif mapped is not None:  # already of the model's size: no resize
        x = mapped[0][mapped[1]]
    else:
        # a CT or MR slice: steps 2-4 in place in this thread's buffer (the same numbers as five new
        # frame-sized arrays, a fifth of the time, and no allocation per slice for the heap to keep)
        scratch = _scratch_floats(stored.size).reshape(stored.shape)
        x = modality_lut(stored, ds, frame=frame, out=scratch)
        x = window(x, spec.window, ds, frame=frame, in_place=x is scratch)
        if spec.invert_monochrome1 and str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
            x = np.subtract(1.0, x, out=x) if x is scratch else 1.0 - x
        x = resize(x, shape)
    if spec.std <= 0:
        raise ValueError("preprocessing.std must be positive")
    # a new array, never this thread's buffer (a frame already of the model's size skips the resize)
    return ((x - np.float32(spec.mean)) / np.float32(spec.std)).astype(np.float32)[None]


def preprocess(
    ds: Dataset, spec: Preprocessing, *, frame: int = 0, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """One frame of `ds` as the model's input: float32 [1, H, W] (H, W = spec.resize).

    Multi-frame images: only `frame` (0-based, default the first) is used; see
    `preprocess_frames` for all of them.

    Raises:
        ImagingError: the pixel data cannot be decoded or is not a greyscale image.
    """
    stored = decode(ds, max_pixels=max_pixels)
    if stored.ndim == 3:
        if not 0 <= frame < stored.shape[0]:
            raise ImagingError(f"frame {frame} out of range (image has {stored.shape[0]} frames)")
        stored = stored[frame]
    elif frame != 0:
        raise ImagingError(f"frame {frame} out of range (single-frame image)")
    return _one_frame(ds, stored, spec, frame)


def preprocess_frames(ds: Dataset, spec: Preprocessing, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Every frame of `ds` as model input: float32 [F, 1, H, W] (F = 1 for a single-frame image)."""
    stored = decode(ds, max_pixels=max_pixels)
    frames = stored[None] if stored.ndim == 2 else stored
    return np.stack([_one_frame(ds, f, spec, i) for i, f in enumerate(frames)])


def stack(tensors: Sequence[np.ndarray], batch_size: int | None = None) -> np.ndarray:
    """[1, H, W] tensors -> one batch [N, 1, H, W]; zero-padded up to `batch_size` if given.

    Padding lets a runtime with fixed batch sizes (TensorRT profiles) take a short batch; the
    caller drops the outputs of the padded rows (the first len(tensors) are real).
    """
    if not tensors:
        raise ValueError("nothing to stack")
    batch = np.stack([np.asarray(t, dtype=np.float32) for t in tensors])
    if batch_size is not None and batch.shape[0] < batch_size:
        pad = np.zeros((batch_size - batch.shape[0], *batch.shape[1:]), dtype=np.float32)
        batch = np.concatenate([batch, pad])
    return batch
