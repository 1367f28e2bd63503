"""Province-level administrative units of Việt Nam, before and after the 2025 merger.

Resolution 202/2025/QH15 reduced 63 provinces to 34 with effect from 2025-07-01. Registries
and old PINs still carry pre-merger codes, so every legacy code must be *mapped* to the
province it now belongs to, never rejected or dropped.

Every current code is also a pre-merger code (of the unit that was kept, or of one of the
merged units, e.g. 44 was Quảng Bình and is now Quảng Trị), and that pre-merger unit always
became part of the current province with the same code, so a code never resolves
ambiguously. PINs use the 2-digit code prefixed with "0" (001 Hà Nội, 079 TP. Hồ Chí Minh).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = [
    "CURRENT_PROVINCES",
    "LEGACY_PROVINCES",
    "LegacyProvince",
    "Province",
    "ProvinceResolution",
    "UnknownProvinceCode",
    "admin_code",
    "is_known_pin_province",
    "resolve_province",
]


@dataclass(frozen=True, slots=True)
class Province:
    """A province-level unit in force since 2025-07-01; ``code`` is the 2-digit admin code."""

    code: str
    name: str


@dataclass(frozen=True, slots=True)
class LegacyProvince:
    """A pre-merger (63-unit) province and the current code it became part of."""

    code: str
    name: str
    merged_into: str


@dataclass(frozen=True, slots=True)
class ProvinceResolution:
    """Result of resolving a code received from a registry.

    ``is_legacy`` is True only when ``given_code`` is no longer a current code (the unit was
    merged away). Codes reused by a current province (e.g. "44") are reported as current.
    """

    current: Province
    given_code: str
    is_legacy: bool


class UnknownProvinceCode(ValueError):
    """The code is neither a current nor a pre-merger province code."""

    def __init__(self, code: str) -> None:
        super().__init__(f"unknown province code: {code!r}")
        self.code = code


_CURRENT: tuple[tuple[str, str], ...] = (
    ("01", "Hà Nội"),
    ("04", "Cao Bằng"),
    ("08", "Tuyên Quang"),
    ("11", "Điện Biên"),
    ("12", "Lai Châu"),
    ("14", "Sơn La"),
    ("15", "Lào Cai"),
    ("19", "Thái Nguyên"),
    ("20", "Lạng Sơn"),
    ("22", "Quảng Ninh"),
    ("24", "Bắc Ninh"),
    ("25", "Phú Thọ"),
    ("31", "Hải Phòng"),
    ("33", "Hưng Yên"),
    ("37", "Ninh Bình"),
    ("38", "Thanh Hóa"),
    ("40", "Nghệ An"),
    ("42", "Hà Tĩnh"),
    ("44", "Quảng Trị"),
    ("46", "Huế"),
    ("48", "Đà Nẵng"),
    ("51", "Quảng Ngãi"),
    ("52", "Gia Lai"),
    ("56", "Khánh Hòa"),
    ("66", "Đắk Lắk"),
    ("68", "Lâm Đồng"),
    ("75", "Đồng Nai"),
    ("79", "TP. Hồ Chí Minh"),
    ("80", "Tây Ninh"),
    ("82", "Đồng Tháp"),
    ("86", "Vĩnh Long"),
    ("91", "An Giang"),
    ("92", "Cần Thơ"),
    ("96", "Cà Mau"),
)

# (pre-merger code, pre-merger name, current code it belongs to since 2025-07-01)
_LEGACY: tuple[tuple[str, str, str], ...] = (
    ("01", "Hà Nội", "01"),
    ("02", "Hà Giang", "08"),
    ("04", "Cao Bằng", "04"),
    ("06", "Bắc Kạn", "19"),
    ("08", "Tuyên Quang", "08"),
    ("10", "Lào Cai", "15"),
    ("11", "Điện Biên", "11"),
    ("12", "Lai Châu", "12"),
    ("14", "Sơn La", "14"),
    ("15", "Yên Bái", "15"),
    ("17", "Hòa Bình", "25"),
    ("19", "Thái Nguyên", "19"),
    ("20", "Lạng Sơn", "20"),
    ("22", "Quảng Ninh", "22"),
    ("24", "Bắc Giang", "24"),
    ("25", "Phú Thọ", "25"),
    ("26", "Vĩnh Phúc", "25"),
    ("27", "Bắc Ninh", "24"),
    ("30", "Hải Dương", "31"),
    ("31", "Hải Phòng", "31"),
    ("33", "Hưng Yên", "33"),
    ("34", "Thái Bình", "33"),
    ("35", "Hà Nam", "37"),
    ("36", "Nam Định", "37"),
    ("37", "Ninh Bình", "37"),
    ("38", "Thanh Hóa", "38"),
    ("40", "Nghệ An", "40"),
    ("42", "Hà Tĩnh", "42"),
    ("44", "Quảng Bình", "44"),
    ("45", "Quảng Trị", "44"),
    ("46", "Thừa Thiên Huế", "46"),
    ("48", "Đà Nẵng", "48"),
    ("49", "Quảng Nam", "48"),
    ("51", "Quảng Ngãi", "51"),
    ("52", "Bình Định", "52"),
    ("54", "Phú Yên", "66"),
    ("56", "Khánh Hòa", "56"),
    ("58", "Ninh Thuận", "56"),
    ("60", "Bình Thuận", "68"),
    ("62", "Kon Tum", "51"),
    ("64", "Gia Lai", "52"),
    ("66", "Đắk Lắk", "66"),
    ("67", "Đắk Nông", "68"),
    ("68", "Lâm Đồng", "68"),
    ("70", "Bình Phước", "75"),
    ("72", "Tây Ninh", "80"),
    ("74", "Bình Dương", "79"),
    ("75", "Đồng Nai", "75"),
    ("77", "Bà Rịa - Vũng Tàu", "79"),
    ("79", "TP. Hồ Chí Minh", "79"),
    ("80", "Long An", "80"),
    ("82", "Tiền Giang", "82"),
    ("83", "Bến Tre", "86"),
    ("84", "Trà Vinh", "86"),
    ("86", "Vĩnh Long", "86"),
    ("87", "Đồng Tháp", "82"),
    ("89", "An Giang", "91"),
    ("91", "Kiên Giang", "91"),
    ("92", "Cần Thơ", "92"),
    ("93", "Hậu Giang", "92"),
    ("94", "Sóc Trăng", "92"),
    ("95", "Bạc Liêu", "96"),
    ("96", "Cà Mau", "96"),
)

CURRENT_PROVINCES: Mapping[str, Province] = MappingProxyType(
    {code: Province(code, name) for code, name in _CURRENT}
)
LEGACY_PROVINCES: Mapping[str, LegacyProvince] = MappingProxyType(
    {code: LegacyProvince(code, name, into) for code, name, into in _LEGACY}
)

# Fail at import rather than mis-route events if the tables are ever edited inconsistently.
if len(CURRENT_PROVINCES) != 34 or len(LEGACY_PROVINCES) != 63:  # pragma: no cover
    raise RuntimeError("province tables must hold 34 current and 63 legacy units")
_orphans = [p.code for p in LEGACY_PROVINCES.values() if p.merged_into not in CURRENT_PROVINCES]
if _orphans:  # pragma: no cover
    raise RuntimeError(f"legacy provinces mapped to no current province: {_orphans}")


def admin_code(code: str) -> str | None:
    """The 2-digit admin code of a 2-digit or "0"-prefixed 3-digit code ("079" and "79" are
    one province, known or not), else None."""
    code = code.strip()
    # isascii() guard: str.isdigit() also accepts e.g. Arabic-Indic or superscript digits.
    if not (code.isascii() and code.isdigit()):
        return None
    if len(code) == 2:
        return code
    if len(code) == 3 and code[0] == "0":
        return code[1:]
    return None


def resolve_province(code: str) -> ProvinceResolution:
    """Map a current or pre-merger code ("79", "079", " 74 ") to the current province.

    Raises UnknownProvinceCode for anything that is not a known 2- or 3-digit code.
    """
    given = code.strip()
    admin = admin_code(given)
    if admin is None:
        raise UnknownProvinceCode(code)
    current = CURRENT_PROVINCES.get(admin)
    if current is not None:
        return ProvinceResolution(current=current, given_code=given, is_legacy=False)
    legacy = LEGACY_PROVINCES.get(admin)
    if legacy is None:
        raise UnknownProvinceCode(code)
    return ProvinceResolution(
        current=CURRENT_PROVINCES[legacy.merged_into], given_code=given, is_legacy=True
    )


# Every 3-digit PIN prefix: "0" and a current or pre-merger admin code. A set, because every
# PIN parsed (each event, each verification) asks.
_PIN_PREFIXES = frozenset(f"0{code}" for code in (*CURRENT_PROVINCES, *LEGACY_PROVINCES))


def is_known_pin_province(code3: str) -> bool:
    """True if ``code3`` is a valid 3-digit PIN province prefix (current or pre-merger)."""
    return code3 in _PIN_PREFIXES
