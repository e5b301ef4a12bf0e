"""The GeoTIFF writer (fedrs.data.geotiff) and the reconstructed patch files it writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from fedrs.compression.patch_files import (
    read_georeference,
    read_patch_folders,
    s2_native_bands,
    write_s1_patch,
    write_s2_patch,
)
from fedrs.container import GeoReference
from fedrs.data.geotiff import geotiff_bytes
from fedrs.errors import InputError


def test_geotiff_writer_round_trips_through_rasterio(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    cases: list[tuple[np.ndarray, float, int | None]] = [
        (rng.integers(1, 60000, (60, 60)).astype(np.uint16), 20.0, 0),
        (rng.normal(-12, 5, (120, 120)).astype(np.float32), 10.0, None),
    ]
    for i, (array, pixel, nodata) in enumerate(cases):
        path = tmp_path / f"x{i}.tif"
        path.write_bytes(
            geotiff_bytes(
                array,
                epsg=32635,
                transform=(pixel, 0.0, 300000.0, 0.0, -pixel, 6200000.0),
                nodata=nodata,
            )
        )
        with rasterio.open(path) as src:
            np.testing.assert_array_equal(src.read(1), array)
            assert src.crs.to_epsg() == 32635
            assert src.transform.a == pixel and src.transform.f == 6200000.0
            assert src.nodata == nodata
    with pytest.raises(InputError):
        geotiff_bytes(
            np.zeros((2, 2, 2), np.uint16), epsg=32633, transform=(10, 0, 0, 0, -10, 0), nodata=0
        )


def test_geotiff_writer_without_georeference_or_north_up_grid(tmp_path: Path) -> None:
    band = np.arange(20 * 30, dtype=np.uint16).reshape(20, 30)
    plain = tmp_path / "plain.tif"
    plain.write_bytes(geotiff_bytes(band))
    with pytest.warns(rasterio.errors.NotGeoreferencedWarning), rasterio.open(plain) as src:
        assert src.crs is None and src.nodata is None
        np.testing.assert_array_equal(src.read(1), band)
    rotated = (0.001, 0.0002, 10.0, 0.0001, -0.001, 50.0)
    path = tmp_path / "geo.tif"
    path.write_bytes(geotiff_bytes(band, epsg=4326, transform=rotated, geographic=True))
    with rasterio.open(path) as src:
        assert src.crs.to_epsg() == 4326 and src.crs.is_geographic
        assert tuple(src.transform)[:6] == rotated
        np.testing.assert_array_equal(src.read(1), band)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epsg": 32633}, "both an EPSG code and a transform"),
        ({"transform": (10, 0, 0, 0, -10, 0)}, "both an EPSG code and a transform"),
        ({"epsg": 99999, "transform": (10, 0, 0, 0, -10, 0)}, "EPSG code"),
        ({"epsg": 32633, "transform": (10, 0, 0)}, "6 numbers"),
        ({"epsg": 32633, "transform": (10, 0, float("nan"), 0, -10, 0)}, "finite"),
    ],
)
def test_geotiff_writer_refuses_a_partial_georeference(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(InputError, match=message):
        geotiff_bytes(np.zeros((4, 4), np.float32), **kwargs)  # type: ignore[arg-type]


def test_reconstructed_patch_files_keep_values_and_georeference(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    s2 = rng.uniform(0, 9000, (12, 120, 120))
    s1 = rng.normal(-15, 4, (2, 120, 120)).astype(np.float32)
    georef = GeoReference("EPSG:32633", (10.0, 0.0, 391200.0, 0.0, -10.0, 5348400.0), 120, 120)
    name = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_76_43"
    s1_name = "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_76_43"
    s2_folder = write_s2_patch(tmp_path, name, s2, georef)
    s1_folder = write_s1_patch(tmp_path, s1_name, s1, georef)
    for band, data in s2_native_bands(s2).items():
        path = s2_folder / f"{name}_{band}.tif"
        scale = 120 // data.shape[0]
        with rasterio.open(path) as src:
            np.testing.assert_array_equal(src.read(1), data)
        assert read_georeference(path) == GeoReference(
            "EPSG:32633",
            (10.0 * scale, 0.0, 391200.0, 0.0, -10.0 * scale, 5348400.0),
            *data.shape,
        )
    query = read_patch_folders([s2_folder, s1_folder])
    np.testing.assert_array_equal(query.images["s1"].numpy(), s1)
    assert query.georef == {"s2": georef, "s1": georef}

    bare = write_s1_patch(tmp_path / "bare", s1_name, s1, None)
    assert read_georeference(bare / f"{s1_name}_VV.tif") is None
    wkt = 'LOCAL_CS["somewhere",UNIT["metre",1]]'
    with pytest.raises(InputError, match="EPSG code"):
        write_s1_patch(tmp_path / "wkt", s1_name, s1, GeoReference(wkt, georef.transform, 120, 120))
