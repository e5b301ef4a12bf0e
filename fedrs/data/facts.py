"""Facts of the BigEarthNet archive (v1.0 / BigEarthNet-MM and v2.0 / reBEN).

Values copied from the archive's public documentation and metadata: band names and resolutions,
per-band mean and standard deviation over the archive, the 43 CORINE classes of v1.0 and the 19
classes of the BigEarthNet nomenclature with the 43 -> 19 mapping.  Class order is the original
BigEarthNet order (not alphabetical); models record it as ``LABELS_19``.

Citation: Sumbul et al., "BigEarthNet-MM: A Large Scale Multi-Modal Multi-Label Benchmark Archive
for Remote Sensing Image Classification and Retrieval", IEEE GRSM 2021; Clasen et al., "reBEN:
Refined BigEarthNet Dataset for Remote Sensing Image Analysis", 2024.  Data licence:
CDLA-Permissive-1.0; contains modified Copernicus Sentinel data 2017-2018.
"""

from __future__ import annotations

PATCH_SIZE = 120
"""Pixels per side of a patch at 10 m (1200 m on the ground)."""

ARCHIVE_SIZE_V1 = 590326
ARCHIVE_SIZE_V2 = 549488

S2_BANDS: tuple[str, ...] = (
    "B01",
    "B02",
    "B03",
    "B04",
    "B05",
    "B06",
    "B07",
    "B08",
    "B8A",
    "B09",
    "B11",
    "B12",
)
S2_RESOLUTION_M: dict[str, int] = {
    "B01": 60,
    "B02": 10,
    "B03": 10,
    "B04": 10,
    "B05": 20,
    "B06": 20,
    "B07": 20,
    "B08": 10,
    "B8A": 20,
    "B09": 60,
    "B11": 20,
    "B12": 20,
}
S2_PIXELS_PER_SIDE: dict[int, int] = {10: 120, 20: 60, 60: 20}
S2_MEAN: tuple[float, ...] = (
    340.76769064,
    429.9430203,
    614.21682446,
    590.23569706,
    950.68368468,
    1792.46290469,
    2075.46795189,
    2218.94553375,
    2266.46036911,
    2246.0605464,
    1594.42694882,
    1009.32729131,
)
S2_STD: tuple[float, ...] = (
    554.81258967,
    572.41639287,
    582.87945694,
    675.88746967,
    729.89827633,
    1096.01480586,
    1273.45393088,
    1365.45589904,
    1356.13789355,
    1302.3292881,
    1079.19066363,
    818.86747235,
)

S1_BANDS: tuple[str, ...] = ("VV", "VH")
S1_MEAN: tuple[float, ...] = (
    -12.619993741972035,
    -19.29044597721542,
)
S1_STD: tuple[float, ...] = (
    5.115911777546365,
    5.464428464912864,
)

LABELS_43: tuple[str, ...] = (
    "Continuous urban fabric",
    "Discontinuous urban fabric",
    "Industrial or commercial units",
    "Road and rail networks and associated land",
    "Port areas",
    "Airports",
    "Mineral extraction sites",
    "Dump sites",
    "Construction sites",
    "Green urban areas",
    "Sport and leisure facilities",
    "Non-irrigated arable land",
    "Permanently irrigated land",
    "Rice fields",
    "Vineyards",
    "Fruit trees and berry plantations",
    "Olive groves",
    "Pastures",
    "Annual crops associated with permanent crops",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas",
    "Broad-leaved forest",
    "Coniferous forest",
    "Mixed forest",
    "Natural grassland",
    "Moors and heathland",
    "Sclerophyllous vegetation",
    "Transitional woodland/shrub",
    "Beaches, dunes, sands",
    "Bare rock",
    "Sparsely vegetated areas",
    "Burnt areas",
    "Inland marshes",
    "Peatbogs",
    "Salt marshes",
    "Salines",
    "Intertidal flats",
    "Water courses",
    "Water bodies",
    "Coastal lagoons",
    "Estuaries",
    "Sea and ocean",
)

LABELS_19: tuple[str, ...] = (
    "Urban fabric",
    "Industrial or commercial units",
    "Arable land",
    "Permanent crops",
    "Pastures",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas",
    "Broad-leaved forest",
    "Coniferous forest",
    "Mixed forest",
    "Natural grassland and sparsely vegetated areas",
    "Moors, heathland and sclerophyllous vegetation",
    "Transitional woodland, shrub",
    "Beaches, dunes, sands",
    "Inland wetlands",
    "Coastal wetlands",
    "Inland waters",
    "Marine waters",
)

LABEL_43_TO_19: dict[str, str | None] = {
    "Continuous urban fabric": "Urban fabric",
    "Discontinuous urban fabric": "Urban fabric",
    "Industrial or commercial units": "Industrial or commercial units",
    "Road and rail networks and associated land": None,
    "Port areas": None,
    "Airports": None,
    "Mineral extraction sites": None,
    "Dump sites": None,
    "Construction sites": None,
    "Green urban areas": None,
    "Sport and leisure facilities": None,
    "Non-irrigated arable land": "Arable land",
    "Permanently irrigated land": "Arable land",
    "Rice fields": "Arable land",
    "Vineyards": "Permanent crops",
    "Fruit trees and berry plantations": "Permanent crops",
    "Olive groves": "Permanent crops",
    "Pastures": "Pastures",
    "Annual crops associated with permanent crops": "Permanent crops",
    "Complex cultivation patterns": "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation": (
        "Land principally occupied by agriculture, with significant areas of natural vegetation"
    ),
    "Agro-forestry areas": "Agro-forestry areas",
    "Broad-leaved forest": "Broad-leaved forest",
    "Coniferous forest": "Coniferous forest",
    "Mixed forest": "Mixed forest",
    "Natural grassland": "Natural grassland and sparsely vegetated areas",
    "Moors and heathland": "Moors, heathland and sclerophyllous vegetation",
    "Sclerophyllous vegetation": "Moors, heathland and sclerophyllous vegetation",
    "Transitional woodland/shrub": "Transitional woodland, shrub",
    "Beaches, dunes, sands": "Beaches, dunes, sands",
    "Bare rock": None,
    "Sparsely vegetated areas": "Natural grassland and sparsely vegetated areas",
    "Burnt areas": None,
    "Inland marshes": "Inland wetlands",
    "Peatbogs": "Inland wetlands",
    "Salt marshes": "Coastal wetlands",
    "Salines": "Coastal wetlands",
    "Intertidal flats": None,
    "Water courses": "Inland waters",
    "Water bodies": "Inland waters",
    "Coastal lagoons": "Marine waters",
    "Estuaries": "Marine waters",
    "Sea and ocean": "Marine waters",
}
