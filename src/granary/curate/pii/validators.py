"""Checksum validators that turn regex candidates into confirmed PII: Luhn, IBAN mod-97, Chinese ID, IPs."""

from __future__ import annotations

import datetime
import ipaddress

IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24,
    "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21,
    "HU": 28, "IE": 22, "IL": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LI": 21,
    "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30,
    "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24,
    "SE": 24, "SI": 19, "SK": 24, "SM": 27, "TN": 24, "TR": 26, "UA": 29, "VG": 24, "XK": 20,
}
_CN_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CN_CHECK = "10X98765432"


def digits_of(s: str) -> str:
    """The ASCII digits of `s`."""
    return "".join(ch for ch in s if "0" <= ch <= "9")


def luhn_ok(number: str) -> bool:
    """Luhn (mod 10) checksum over the digits of `number`."""
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def credit_card_ok(candidate: str) -> bool:
    """13-19 digits, a known issuer prefix (Visa, Mastercard, Amex, Discover, JCB, Diners) and Luhn."""
    d = digits_of(candidate)
    if not 13 <= len(d) <= 19 or not luhn_ok(d):
        return False
    two, four = int(d[:2]), int(d[:4])
    return (
        d[0] == "4"
        or 51 <= two <= 55
        or 2221 <= four <= 2720
        or two in (34, 37, 36, 38, 35)
        or d.startswith(("6011", "65", "300", "301", "302", "303", "304", "305"))
    )


def iban_ok(candidate: str) -> bool:
    """Country length table plus ISO 13616 mod-97 == 1."""
    s = candidate.replace(" ", "").upper()
    if IBAN_LENGTHS.get(s[:2]) != len(s) or not s[2:4].isdigit():
        return False
    rearranged = s[4:] + s[:4]
    num = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(num) % 97 == 1


def cn_id_ok(candidate: str) -> bool:
    """GB 11643-1999: 17 digits, a plausible birth date, ISO 7064 mod 11-2 check character."""
    s = candidate.upper()
    if len(s) != 18 or not s[:17].isdigit():
        return False
    try:
        born = datetime.date(int(s[6:10]), int(s[10:12]), int(s[12:14]))
    except ValueError:
        return False
    if not datetime.date(1900, 1, 1) <= born <= datetime.date.today():
        return False
    total = sum(int(ch) * w for ch, w in zip(s[:17], _CN_WEIGHTS, strict=True))
    return _CN_CHECK[total % 11] == s[17]


def ipv4_ok(candidate: str) -> bool:
    """A dotted quad with octets 0-255 and no leading zeros."""
    try:
        ipaddress.IPv4Address(candidate)
    except ValueError:
        return False
    return True


def ipv6_ok(candidate: str) -> bool:
    """A valid IPv6 address (compressed forms included) with at least two groups written out."""
    if candidate.count(":") < 2:
        return False
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return sum(1 for g in candidate.split(":") if g) >= 2


def ssn_ok(candidate: str) -> bool:
    """US SSN area/group/serial rules (no 000, 666 or 9xx area; no 00 group; no 0000 serial)."""
    area, group, serial = candidate.split("-")
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def phone_ok(candidate: str) -> bool:
    """7 to 15 digits (E.164 maximum)."""
    return 7 <= len(digits_of(candidate)) <= 15
