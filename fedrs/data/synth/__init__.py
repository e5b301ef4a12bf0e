"""A synthetic BigEarthNet-MM-like archive: the default data when a user gives none.

Fact sheet of an archive written by :func:`write_synthetic_archive` (``fedrs synth``):

* Layout: BigEarthNet v2.0 (reBEN), read by :func:`fedrs.data.open_archive` like the real one:
  ``BigEarthNet-S2/<S2 product>/<patch_id>/<patch_id>_<band>.tif`` (12 single-band uint16
  GeoTIFFs in the order B01 ... B12 of ``S2_BANDS``: 10 m bands 120x120, 20 m bands 60x60, 60 m
  bands 20x20, surface reflectance x 10000, nodata 0), ``BigEarthNet-S1/<S1 product>/<s1_name>/
  <s1_name>_{VV,VH}.tif`` (float32 backscatter in dB, 120x120) and ``metadata.parquet`` with the
  official columns (patch_id, labels, split, country, s1_name, s2v1_name,
  contains_seasonal_snow, contains_cloud_or_shadow) plus ``has_s1`` and ``has_s2``.  Every file
  carries the UTM CRS (EPSG:326xx) and the geotransform of its 1200 m x 1200 m footprint in the
  real MGRS tile; names follow the real patterns, e.g.
  ``S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57`` and
  ``S1A_IW_GRDH_1SDV_20170613T165043_33UUP_26_57``.
* Rows: country, split, label set and Sentinel-1/-2 products (tile and date, June 2017 - May
  2018) are drawn from the frequencies of the real v2.0 metadata (``stats.json``), so
  country sizes, seasons and label co-occurrence are those of BigEarthNet.
* Pixels are conditioned on the labels: a patch is cut into spatially coherent regions, one per
  label, with areas drawn at random (at least 5 % each).  Each region carries its class's
  spectral signature (``LAND_COVER``: water dark in the near infrared, vegetation bright in NIR
  and red edge, built-up bright and flat, ...), seasonal senescence of vegetation, field-parcel
  and canopy texture, haze and sensor noise; a per-band power-law calibration brings the
  archive's per-band mean and standard deviation close to the BigEarthNet values of
  ``fedrs.data.facts`` (within a few per cent over a few thousand patches).  Sentinel-1
  backscatter follows the same regions (water low, forest medium, built-up high) with speckle,
  calibrated to the BigEarthNet mean and standard deviation in dB.
* Optional S1-only and S2-only patches (``s1_only_fraction``, ``s2_only_fraction``): an S1-only
  patch has no S2 folder and its ``patch_id`` is its ``s1_name``; an S2-only patch has no S1
  folder and ``s1_name`` None.
* Deterministic for a seed (same files byte for byte); a marker file ``.fedrs-synth.json``
  written last records the parameters, so :func:`ensure_synthetic_archive` reuses a complete
  archive and rebuilds an incomplete one.

The seasonal snow and cloud flags are always False: like the rows of the official
``metadata.parquet``, synthetic patches are free of snow and clouds.

One concern a module: :mod:`~fedrs.data.synth.plan` (the rows: names, labels, split, country,
modalities, georeference), :mod:`~fedrs.data.synth.render` (the pixels),
:mod:`~fedrs.data.synth.calibrate` (per-band calibration to BigEarthNet's statistics),
:mod:`~fedrs.data.synth.write` (the archive on disk) and :mod:`~fedrs.data.synth.stats` (the
packaged statistics of the real v2.0 metadata).
"""

from fedrs.data.synth.calibrate import CALIBRATION, Calibration, fit_calibration
from fedrs.data.synth.plan import S1_DIR, S2_DIR, check_parameters
from fedrs.data.synth.render import LAND_COVER, MIN_REGION_FRACTION, LandCover
from fedrs.data.synth.write import (
    MARKER,
    METADATA_COLUMNS,
    METADATA_FILE,
    PARTIAL_MARKER,
    SYNTH_VERSION,
    ProgressCallback,
    check_output,
    default_synthetic_root,
    ensure_synthetic_archive,
    is_synthetic_archive,
    read_marker,
    write_synthetic_archive,
)

__all__ = [
    "CALIBRATION",
    "LAND_COVER",
    "MARKER",
    "METADATA_COLUMNS",
    "METADATA_FILE",
    "MIN_REGION_FRACTION",
    "PARTIAL_MARKER",
    "S1_DIR",
    "S2_DIR",
    "SYNTH_VERSION",
    "Calibration",
    "LandCover",
    "ProgressCallback",
    "check_output",
    "check_parameters",
    "default_synthetic_root",
    "ensure_synthetic_archive",
    "fit_calibration",
    "is_synthetic_archive",
    "read_marker",
    "write_synthetic_archive",
]
