"""Where simulated people are born and live: provinces weighted by population, communes,
address lines and the local ethnic mix.

Places are drawn among the 63 pre-merger provinces, weighted by their population, so that the
merged-away units (Hải Dương, Hà Nam, Bình Dương…) keep their real share and the stream
carries legacy codes in the proportions registries actually produce.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from popsync.dev.simulate._random import below, between_ints
from popsync.dev.simulate.names import WeightedChoice
from popsync.domain.provinces import CURRENT_PROVINCES, LEGACY_PROVINCES

__all__ = [
    "ADDRESS_LEGACY_SHARE",
    "LEGACY_POPULATION",
    "MERGED_AWAY",
    "Place",
    "commune_code",
    "current_of",
    "pick_ethnicity",
    "pick_unit",
]

# Population in millions of each pre-merger province (2019 census, rounded).
LEGACY_POPULATION: dict[str, float] = {
    "01": 8.05, "02": 0.85, "04": 0.53, "06": 0.31, "08": 0.78, "10": 0.73, "11": 0.60,
    "12": 0.46, "14": 1.25, "15": 0.82, "17": 0.85, "19": 1.29, "20": 0.78, "22": 1.32,
    "24": 1.80, "25": 1.46, "26": 1.15, "27": 1.37, "30": 1.89, "31": 2.03, "33": 1.25,
    "34": 1.86, "35": 0.85, "36": 1.78, "37": 0.98, "38": 3.64, "40": 3.33, "42": 1.29,
    "44": 0.90, "45": 0.63, "46": 1.13, "48": 1.13, "49": 1.50, "51": 1.23, "52": 1.49,
    "54": 0.87, "56": 1.23, "58": 0.59, "60": 1.23, "62": 0.54, "64": 1.51, "66": 1.87,
    "67": 0.62, "68": 1.30, "70": 0.99, "72": 1.17, "74": 2.43, "75": 3.10, "77": 1.15,
    "79": 8.99, "80": 1.69, "82": 1.76, "83": 1.29, "84": 1.01, "86": 1.02, "87": 1.60,
    "89": 1.91, "91": 1.72, "92": 1.24, "93": 0.73, "94": 1.20, "95": 0.91, "96": 1.19,
}  # fmt: skip
if set(LEGACY_POPULATION) != set(LEGACY_PROVINCES):  # pragma: no cover
    raise RuntimeError("LEGACY_POPULATION must cover exactly the 63 pre-merger provinces")

# Pre-merger codes that are no longer current (the unit was merged into another province).
MERGED_AWAY: frozenset[str] = frozenset(set(LEGACY_PROVINCES) - set(CURRENT_PROVINCES))

_ALL_UNITS = WeightedChoice(sorted(LEGACY_POPULATION.items()))
_MERGED_UNITS = WeightedChoice(sorted((c, p) for c, p in LEGACY_POPULATION.items()
                                      if c in MERGED_AWAY))  # fmt: skip
_KEPT_UNITS = WeightedChoice(sorted((c, p) for c, p in LEGACY_POPULATION.items()
                                    if c not in MERGED_AWAY))  # fmt: skip
# People move to and study/work in the big cities and industrial provinces far more often.
_CITY_PULL = {"01": 3.0, "79": 3.0, "74": 2.5, "75": 2.0, "27": 2.0, "24": 1.5, "48": 2.0,
              "31": 1.8, "92": 1.5, "22": 1.3}  # fmt: skip
_MIGRATION_UNITS = WeightedChoice(
    sorted((c, p * _CITY_PULL.get(c, 1.0)) for c, p in LEGACY_POPULATION.items())
)

# Target share of addresses sent with a pre-merger code (old registry software, old forms).
ADDRESS_LEGACY_SHARE = 0.10
# Only an address in a merged-away unit can carry a legacy code. Those units hold ~35% of the
# population, but migration pulls people into the kept big cities, so only ~30% of simulated
# addresses lie in them; scale so that ~10% of all addresses keep a legacy code.
_ADDRESSES_IN_MERGED_UNITS = 0.30
_SEND_LEGACY_GIVEN_MERGED = ADDRESS_LEGACY_SHARE / _ADDRESSES_IN_MERGED_UNITS


def pick_unit(rng: random.Random, how: str = "population") -> str:
    """A pre-merger province code: by population, among merged/kept units, or migration."""
    if how == "merged":
        return _MERGED_UNITS.pick(rng)
    if how == "kept":
        return _KEPT_UNITS.pick(rng)
    if how == "migration":
        return _MIGRATION_UNITS.pick(rng)
    return _ALL_UNITS.pick(rng)


def current_of(unit: str) -> str:
    """The current (34-province) code a pre-merger unit belongs to."""
    return LEGACY_PROVINCES[unit].merged_into


def _communes_in(unit: str) -> int:
    # Roughly proportional to population; real provinces have ~100 to ~600 communes.
    return min(900, 60 + int(LEGACY_POPULATION[unit] * 60))


def commune_code(rng: random.Random, unit: str) -> str:
    """A 5-digit commune code, in a range owned by the unit so codes never collide."""
    return f"{int(unit) * 1000 + 1 + below(rng, _communes_in(unit)):05d}"


_STREETS = (
    "Lê Lợi", "Trần Hưng Đạo", "Nguyễn Trãi", "Hai Bà Trưng", "Lý Thường Kiệt", "Quang Trung",
    "Nguyễn Huệ", "Lê Duẩn", "Điện Biên Phủ", "Hùng Vương", "Trần Phú", "Phan Chu Trinh",
    "Nguyễn Du", "Bà Triệu", "Ngô Quyền", "Võ Thị Sáu", "Nguyễn Văn Cừ", "Cách Mạng Tháng Tám",
    "Lê Thánh Tôn", "Phạm Văn Đồng", "Nguyễn Thị Minh Khai", "Trường Chinh", "Hoàng Hoa Thám",
    "Tôn Đức Thắng", "Lạc Long Quân", "Võ Nguyên Giáp", "Phan Đình Phùng", "Lê Hồng Phong",
)  # fmt: skip
_SOUTHERN_HAMLETS = ("Phú Hòa", "Tân Lập", "Bình Thạnh", "Long Hưng", "An Phú", "Mỹ Lợi",
                     "Thạnh Mỹ", "Hòa Bình", "Tân Thuận", "Phước Lộc")  # fmt: skip
_MOUNTAIN_VILLAGES = ("Nà Pục", "Huổi Lếch", "Pá Khoang", "Nậm Cang", "Sín Chải", "Phiêng Luông",
                      "Tả Van", "Lũng Cú", "Nà Hang", "Bản Phố")  # fmt: skip
_MOUNTAIN_UNITS = frozenset({"02", "04", "06", "08", "10", "11", "12", "14", "15", "17", "20"})
_URBAN_UNITS = frozenset({"01", "79", "48", "31", "92", "74", "75"})


def address_line(rng: random.Random, unit: str) -> str:
    """House number and street in towns, hamlet or village in the countryside (NFC)."""
    urban = rng.random() < (0.85 if unit in _URBAN_UNITS else 0.35)
    if urban:
        street = _STREETS[below(rng, len(_STREETS))]
        number = between_ints(rng, 1, 350)
        style = rng.random()
        if style < 0.6:
            return f"Số {number} {street}"
        if int(unit) >= 70:  # southern alleys: hẻm numbers with a slash
            return f"Số {number}/{between_ints(rng, 1, 80)} {street}"
        return f"Số {between_ints(rng, 1, 60)}, ngõ {number} {street}"
    if unit in _MOUNTAIN_UNITS:
        return f"Bản {_MOUNTAIN_VILLAGES[below(rng, len(_MOUNTAIN_VILLAGES))]}"
    if int(unit) >= 70:
        if rng.random() < 0.5:
            return f"Ấp {between_ints(rng, 1, 12)}"
        return f"Ấp {_SOUTHERN_HAMLETS[below(rng, len(_SOUTHERN_HAMLETS))]}"
    kind = "Thôn" if rng.random() < 0.6 else ("Xóm" if int(unit) < 46 else "Tổ dân phố")
    return f"{kind} {between_ints(rng, 1, 15)}"


@dataclass(frozen=True, slots=True)
class Place:
    """One residence: the pre-merger unit it lies in and the code the registry sent for it."""

    unit: str  # pre-merger province code (decides the commune range and style of address)
    code: str  # 2-digit province code as sent: usually current, sometimes the legacy unit
    commune: str
    line: str

    @classmethod
    def draw(cls, rng: random.Random, unit: str) -> Place:
        """A new address in ``unit``; ~10% of all addresses keep a merged-away code."""
        legacy = unit in MERGED_AWAY and rng.random() < _SEND_LEGACY_GIVEN_MERGED
        return cls(
            unit=unit,
            code=unit if legacy else current_of(unit),
            commune=commune_code(rng, unit),
            line=address_line(rng, unit),
        )


# Ethnic mix of births by current province (shares of minorities; the rest is Kinh).
_ETHNIC_MIX: dict[str, tuple[tuple[str, float], ...]] = {
    "04": (("Tày", 0.41), ("Nùng", 0.31), ("Mông", 0.10), ("Dao", 0.10)),
    "08": (("Tày", 0.30), ("Mông", 0.20), ("Dao", 0.12)),
    "11": (("Thái", 0.38), ("Mông", 0.35)),
    "12": (("Mông", 0.40), ("Thái", 0.30), ("Dao", 0.15)),
    "14": (("Thái", 0.53), ("Mông", 0.16), ("Mường", 0.08)),
    "15": (("Mông", 0.20), ("Dao", 0.13), ("Tày", 0.12)),
    "19": (("Tày", 0.20), ("Nùng", 0.07), ("Dao", 0.04)),
    "20": (("Nùng", 0.42), ("Tày", 0.35), ("Dao", 0.04)),
    "22": (("Dao", 0.05), ("Tày", 0.03)),
    "25": (("Mường", 0.20),),
    "38": (("Mường", 0.09), ("Thái", 0.06)),
    "40": (("Thái", 0.10),),
    "52": (("Gia Rai", 0.20),),
    "56": (("Chăm", 0.05),),
    "66": (("Ê Đê", 0.15), ("Gia Rai", 0.02), ("Nùng", 0.03)),
    "68": (("Chăm", 0.02),),
    "79": (("Hoa", 0.04),),
    "86": (("Khmer", 0.10),),
    "91": (("Khmer", 0.10), ("Hoa", 0.01), ("Chăm", 0.005)),
    "92": (("Khmer", 0.15), ("Hoa", 0.02)),
    "96": (("Khmer", 0.05),),
}


def pick_ethnicity(rng: random.Random, current_code: str) -> str:
    """Ethnic group of a baby born in this (current) province."""
    draw = rng.random()
    for ethnicity, share in _ETHNIC_MIX.get(current_code, ()):
        if draw < share:
            return ethnicity
        draw -= share
    return "Kinh"
