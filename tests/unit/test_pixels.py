"""Image -> model tensor: decode, modality LUT, VOI window, MONOCHROME1, resize, bad pixel data."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless, RLELossless

from edge_ai import phantoms
from edge_ai.errors import ImagingError
from edge_ai.imaging import pixels
from edge_ai.inference.package import Preprocessing, Window


@pytest.fixture(scope="module")
def dx() -> Dataset:
    ds, _ = phantoms.dx_case(np.random.default_rng(21), size=128, lesion=True)
    return ds


@pytest.fixture(scope="module")
def ct() -> Dataset:
    series, _ = phantoms.ct_case(np.random.default_rng(22), slices=3, size=64, lesion=False)
    return series[1]


def _spec(
    window: Window, size: tuple[int, int] = (64, 64), mean: float = 0.0, std: float = 1.0
) -> Preprocessing:
    return Preprocessing(window=window, resize=size, mean=mean, std=std)


def test_modality_lut_gives_hounsfield_units(ct: Dataset) -> None:
    """CT stored values are rescaled to HU (air near -1000, soft tissue near 0..100)."""
    hu = pixels.modality_lut(pixels.decode(ct), ct)
    assert hu.dtype == np.float32
    assert np.allclose(hu, ct.pixel_array.astype(np.float32) - 1024)
    assert hu.min() < -900 and -50 < np.median(hu[hu > -500]) < 150


def test_fixed_window_maps_edges_to_zero_and_one() -> None:
    """A fixed window maps center-width/2 to 0, center+width/2 to 1 and clips beyond."""
    values = np.array([[-1000.0, 0.0, 40.0, 80.0, 3000.0]], dtype=np.float32)
    out = pixels.window(values, Window(source="fixed", center=40.0, width=80.0))
    assert np.allclose(out, [[0.0, 0.0, 0.5, 1.0, 1.0]])


def test_dataset_window_used_and_falls_back_to_percentiles(ct: Dataset) -> None:
    """`dataset` windows use the instance's Window Center/Width, or percentiles when it has none."""
    hu = pixels.modality_lut(pixels.decode(ct), ct)
    spec = Window(source="dataset")
    fixed = pixels.window(hu, Window(source="fixed", center=40.0, width=400.0))
    assert np.allclose(pixels.window(hu, spec, ct), fixed)
    bare = copy.deepcopy(ct)
    del bare.WindowCenter, bare.WindowWidth
    assert np.allclose(pixels.window(hu, spec, bare), pixels.window(hu, Window(source="percentile")))


def test_monochrome1_gives_same_tensor_as_monochrome2() -> None:
    """An inverted MONOCHROME1 image reaches the model exactly like its MONOCHROME2 twin."""
    img, _ = phantoms.chest_xray(np.random.default_rng(23), size=128, lesion=True)
    mono2, mono1 = phantoms.dx_dataset(img), phantoms.dx_dataset(img, monochrome1=True)
    assert mono1.PhotometricInterpretation == "MONOCHROME1"
    assert not np.array_equal(mono1.pixel_array, mono2.pixel_array)
    for source in ("dataset", "percentile"):
        spec = _spec(Window(source=source), mean=0.5, std=0.25)
        assert np.allclose(pixels.preprocess(mono1, spec), pixels.preprocess(mono2, spec), atol=1e-5)


def test_preprocess_shape_dtype_and_normalisation(dx: Dataset) -> None:
    """preprocess returns float32 [1, H, W] in the model's input size, normalised with mean/std."""
    raw = pixels.preprocess(dx, _spec(Window(source="percentile"), size=(96, 80)))
    assert raw.shape == (1, 96, 80) and raw.dtype == np.float32
    assert raw.min() >= 0.0 and raw.max() <= 1.0
    norm = pixels.preprocess(dx, _spec(Window(source="percentile"), size=(96, 80), mean=0.5, std=0.25))
    assert np.allclose(norm, (raw - 0.5) / 0.25, atol=1e-5)


@pytest.mark.parametrize("shape", [(64, 64), (100, 37), (256, 300), (1, 1)])
def test_resize_shapes_and_constant_preserved(shape: tuple[int, int]) -> None:
    """Resizing gives exactly the requested rows x columns and keeps a flat image flat."""
    out = pixels.resize(np.full((128, 96), 7.0), shape)
    assert out.shape == shape and out.dtype == np.float32
    assert np.allclose(out, 7.0)


def test_resize_keeps_frame_so_positions_map_one_to_one() -> None:
    """A bright spot keeps its relative position after resizing (boxes map back onto the source)."""
    img = np.zeros((200, 300), dtype=np.float32)
    img[50:60, 210:220] = 1.0  # centre at (215, 55) of (300, 200)
    out = pixels.resize(img, (100, 100))
    r, c = np.unravel_index(int(np.argmax(out)), out.shape)
    assert abs((c + 0.5) / 100 - 215 / 300) < 0.02 and abs((r + 0.5) / 100 - 55 / 200) < 0.02


def test_truncated_pixel_data_raises_imaging_error(dx: Dataset) -> None:
    """Truncated pixel data gives a clear ImagingError, not a crash."""
    bad = copy.deepcopy(dx)
    bad.PixelData = bad.PixelData[: len(bad.PixelData) // 3]
    with pytest.raises(ImagingError, match="cannot decode"):
        pixels.preprocess(bad, _spec(Window(source="percentile")))


def test_corrupt_compressed_pixel_data_raises_imaging_error(dx: Dataset) -> None:
    """Garbage inside an RLE stream gives ImagingError."""
    bad = copy.deepcopy(dx)
    bad.compress(RLELossless)
    data = bytearray(bad.PixelData)
    data[40:] = b"\xff" * (len(data) - 40)
    bad.PixelData = bytes(data)
    with pytest.raises(ImagingError):
        pixels.decode(bad)


def test_colour_and_missing_pixels_rejected(dx: Dataset) -> None:
    """Colour (multi-sample) images and instances without pixel data are refused with a reason."""
    colour = copy.deepcopy(dx)
    colour.SamplesPerPixel = 3
    colour.PhotometricInterpretation = "RGB"
    with pytest.raises(ImagingError, match="colour"):
        pixels.decode(colour)
    empty = copy.deepcopy(dx)
    del empty.PixelData
    with pytest.raises(ImagingError, match="no pixel data"):
        pixels.decode(empty)


def test_huge_dimensions_rejected_before_decoding(dx: Dataset) -> None:
    """An image claiming absurd dimensions is refused without allocating it."""
    with pytest.raises(ImagingError, match="too large"):
        pixels.decode(dx, max_pixels=100)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_compressed_dataset_decodes_like_raw(ct: Dataset, syntax: str) -> None:
    """RLE / JPEG 2000 lossless compressed instances give the same tensor as uncompressed ones."""
    packed = copy.deepcopy(ct)
    try:
        packed.compress(syntax)
    except (RuntimeError, NotImplementedError, ValueError) as exc:  # no encoder plugin installed
        pytest.skip(f"cannot encode {syntax}: {exc}")
    assert packed.file_meta.TransferSyntaxUID == syntax
    spec = _spec(Window(source="fixed", center=40.0, width=400.0))
    assert np.allclose(pixels.preprocess(packed, spec), pixels.preprocess(ct, spec), atol=1e-5)


def test_multiframe_first_frame_and_all_frames(ct: Dataset) -> None:
    """Multi-frame: preprocess takes the first frame; preprocess_frames returns every frame."""
    multi = copy.deepcopy(ct)
    frames = np.stack([ct.pixel_array, ct.pixel_array[::-1]])
    multi.NumberOfFrames = 2
    multi.PixelData = frames.astype("<i2").tobytes()
    spec = _spec(Window(source="fixed", center=40.0, width=400.0), size=(32, 32))
    assert np.allclose(pixels.preprocess(multi, spec), pixels.preprocess(ct, spec))
    all_frames = pixels.preprocess_frames(multi, spec)
    assert all_frames.shape == (2, 1, 32, 32)
    assert np.allclose(all_frames[1], pixels.preprocess(multi, spec, frame=1))


def test_stack_batches_and_pads() -> None:
    """stack builds [N, 1, H, W] and pads a short batch with zeros up to a fixed batch size."""
    t = [np.ones((1, 8, 8), dtype=np.float32)] * 3
    assert pixels.stack(t).shape == (3, 1, 8, 8)
    padded = pixels.stack(t, batch_size=8)
    assert padded.shape == (8, 1, 8, 8) and padded[3:].sum() == 0


def _looked_up(ds: Dataset, stored: np.ndarray, spec: Preprocessing) -> np.ndarray | None:
    mapped = pixels._table(ds, stored, spec, 0)
    return None if mapped is None else mapped[0][mapped[1]]


def _pixel_by_pixel(ds: Dataset, stored: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """Steps 2-4 computed on every pixel (what frames below the table size get)."""
    x = pixels.window(pixels.modality_lut(stored, ds), spec.window, ds)
    return 1.0 - x if str(ds.get("PhotometricInterpretation")) == "MONOCHROME1" else x


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.uint8, np.int8])
@pytest.mark.parametrize("source", ["percentile", "fixed", "dataset"])
def test_big_frames_through_the_table_give_the_very_numbers_of_pixel_by_pixel(dtype: type, source: str) -> None:
    """A DX-sized frame maps its stored values through a table (and its percentiles come from a histogram):
    every output value equals, bit for bit, what the pixel-by-pixel computation gives, whatever the stored
    type, rescale, window source, percentiles, MONOCHROME1, or a nearly flat image."""
    rng = np.random.default_rng(hash((dtype, source)) % 2**32)
    info = np.iinfo(dtype)
    for case in range(4):
        shape = (1024 + case, 1024)
        if case == 3:  # nearly flat: the percentiles fall on the same value
            stored = np.full(shape, 7, dtype)
            stored[:10, :10] = 3
        else:
            centre = 0 if info.min < 0 else info.max / 3
            stored = rng.normal(centre, info.max / (4 + 4 * case), shape).clip(info.min, info.max).astype(dtype)
        ds = Dataset()
        ds.PhotometricInterpretation = "MONOCHROME1" if case % 2 else "MONOCHROME2"
        if case:
            ds.RescaleSlope, ds.RescaleIntercept = (0.5, -1024.0) if case == 1 else (2.3, 3.7)
        if case == 2:
            ds.WindowCenter, ds.WindowWidth = 40, 400
        spec = Preprocessing(window=Window(source=source, center=50.0, width=300.0,
                                           percentiles=(0.5, 99.7) if case else (1.0, 99.0)),
                             resize=(64, 64), invert_monochrome1=True)
        mapped = _looked_up(ds, stored, spec)
        assert mapped is not None
        reference = _pixel_by_pixel(ds, stored, spec)
        assert mapped.dtype == reference.dtype == np.float32
        assert np.array_equal(mapped, reference), case
        # and the node's path, which looks rows up band by band as the resize reads them
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.BitsAllocated = *stored.shape, 1, 8 * stored.dtype.itemsize
        ds.PixelRepresentation = int(info.min < 0)
        tensor = pixels.preprocess_stored(ds, stored, spec)
        assert np.array_equal(tensor, pixels.resize(reference, (64, 64))[None]), case


def test_small_frames_and_wide_types_are_computed_pixel_by_pixel() -> None:
    """A CT slice (512 x 512) or 32-bit values take no table: building one would cost more than it saves."""
    spec = Preprocessing(window=Window(source="percentile"), resize=(64, 64))
    assert pixels._table(Dataset(), np.zeros((512, 512), np.int16), spec, 0) is None
    assert pixels._table(Dataset(), np.zeros((2048, 2048), np.int32), spec, 0) is None


@pytest.mark.parametrize(("n_in", "n_out"), [(2048, 256), (3000, 256), (512, 128), (100, 300), (7, 3)])
def test_banded_resize_equals_the_whole_weight_matrix(n_in: int, n_out: int) -> None:
    """The resize multiplies blocks of the weight matrix over their bands only: the same image as the
    whole matrix product, to float32 rounding."""
    img = np.random.default_rng(n_in).random((n_in, n_in + 5), dtype=np.float32)
    whole = pixels._resize_matrix(n_in, n_out) @ img @ pixels._resize_matrix(n_in + 5, n_out + 1).T
    np.testing.assert_allclose(pixels.resize(img, (n_out, n_out + 1)), whole, rtol=0, atol=1e-6)


def test_the_table_follows_a_modality_lut_sequence_and_strided_frames() -> None:
    """A Modality LUT Sequence (not a rescale) and a frame that is a strided view (one frame of a volume,
    transposed) map through the table to the pixel-by-pixel numbers too."""
    from pydicom.sequence import Sequence as DicomSequence

    rng = np.random.default_rng(5)
    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, 16]
    lut.LUTData = list(np.sort(rng.integers(0, 60000, 4096)).tolist())
    lut.ModalityLUTType = "US"
    ds = Dataset()
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.ModalityLUTSequence = DicomSequence([lut])
    ds.BitsStored, ds.BitsAllocated, ds.PixelRepresentation = 12, 16, 0
    volume = rng.integers(0, 4096, (2, 1100, 1024)).astype(np.uint16)
    spec = Preprocessing(window=Window(source="percentile"), resize=(64, 64))
    frames = (volume[1], volume[0].T, volume[1, ::-1])
    assert [f.flags.c_contiguous for f in frames] == [True, False, False]
    ds.SamplesPerPixel = 1
    for frame in frames:
        mapped = _looked_up(ds, frame, spec)
        reference = _pixel_by_pixel(ds, frame, spec)
        assert mapped is not None and np.array_equal(mapped, reference)
        ds.Rows, ds.Columns = frame.shape
        assert np.array_equal(pixels.preprocess_stored(ds, frame, spec), pixels.resize(reference, (64, 64))[None])


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.uint8])
@pytest.mark.parametrize("source", ["percentile", "fixed", "dataset"])
def test_slices_computed_in_place_give_the_very_numbers_of_new_arrays(dtype: type, source: str) -> None:
    """A CT or MR slice goes through steps 2-4 in a buffer the thread reuses: its tensor equals, bit for
    bit, the one computed with a new array per step, with or without a rescale, for MONOCHROME1 too."""
    rng = np.random.default_rng(hash((dtype, source)) % 2**32)
    info = np.iinfo(dtype)
    for case in range(3):
        stored = rng.integers(info.min, info.max, (512, 500 + case), dtype=dtype, endpoint=True)
        ds = Dataset()
        ds.Rows, ds.Columns, ds.SamplesPerPixel = stored.shape[0], stored.shape[1], 1
        ds.BitsAllocated = ds.BitsStored = 8 * stored.dtype.itemsize
        ds.PixelRepresentation = int(info.min < 0)
        ds.PhotometricInterpretation = "MONOCHROME1" if case == 1 else "MONOCHROME2"
        if case != 2:  # case 2: no rescale at all (MR)
            ds.RescaleSlope, ds.RescaleIntercept = (1, -1024) if case == 0 else (0.37, 11.5)
        if case == 1:
            ds.WindowCenter, ds.WindowWidth = 40, 400
        spec = Preprocessing(window=Window(source=source, center=50.0, width=300.0), resize=(128, 128),
                             mean=0.5, std=0.25, invert_monochrome1=True)
        x = pixels.resize(_pixel_by_pixel(ds, stored, spec), (128, 128))
        reference = ((x - np.float32(spec.mean)) / np.float32(spec.std)).astype(np.float32)[None]
        assert np.array_equal(pixels.preprocess_stored(ds, stored, spec), reference), case


def test_a_slice_already_of_the_models_size_keeps_its_tensor_after_the_next_slice() -> None:
    """A frame of the model's own size needs no resize: its tensor must not be the reused buffer, or the
    next slice would overwrite a tensor already waiting in the batch (the normalisation makes a new one)."""
    spec = Preprocessing(window=Window(source="fixed", center=0.0, width=200.0), resize=(64, 64))
    ds = Dataset()
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.BitsAllocated, ds.PixelRepresentation = 64, 64, 1, 16, 1
    ds.PhotometricInterpretation, ds.RescaleSlope, ds.RescaleIntercept = "MONOCHROME2", 1, 0
    first = pixels.preprocess_stored(ds, np.full((64, 64), -50, np.int16), spec)
    kept = first.copy()
    second = pixels.preprocess_stored(ds, np.full((64, 64), 50, np.int16), spec)
    assert np.array_equal(first, kept) and not np.array_equal(first, second)


def test_threads_preprocessing_at_once_each_get_their_own_slice() -> None:
    """Every thread has its own buffer: slices preprocessed on several threads at once each come out as
    they do alone."""
    from concurrent.futures import ThreadPoolExecutor

    spec = Preprocessing(window=Window(source="percentile"), resize=(64, 64))
    ds = Dataset()
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.BitsAllocated, ds.PixelRepresentation = 256, 256, 1, 16, 1
    ds.PhotometricInterpretation, ds.RescaleSlope, ds.RescaleIntercept = "MONOCHROME2", 1, -1024
    rng = np.random.default_rng(9)
    slices = [rng.integers(0, 3000, (256, 256)).astype(np.int16) for _ in range(8)]
    alone = [pixels.preprocess_stored(ds, s, spec) for s in slices]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(20):
            together = list(pool.map(lambda s: pixels.preprocess_stored(ds, s, spec), slices))
            assert all(np.array_equal(a, b) for a, b in zip(alone, together, strict=True))
