"""``python -m bench.pii_corpus``: (re)write ``bench/pii_corpus.json``, the labelled corpus the
``pii`` benchmark scores the detectors on.

Realistic agent payloads in several locales: chat messages, tool-call JSON, CRM records and
free text, each labelled with the personal values it holds (kind and exact text) and the
region a deployment there would set (``PII(region=...)``). Every value is made up but valid
where validity is checkable (phone numbers parse as valid, cards pass Luhn, IBANs their
checksum) and outside the reserved ranges pseudonyms use. Hard negatives sit beside them:
order numbers, dates and times, versions, prices, tracking numbers, UUIDs, hashes, cards and
IBANs with a wrong check digit, reserved example addresses. Seeded: the file is the same on
every run of this script, and it is committed as it is.
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path
from typing import Any

import phonenumbers as pn

OUT = Path(__file__).with_name("pii_corpus.json")

FIRST = [
    "Dana",
    "Liam",
    "Sofia",
    "Mateo",
    "Aisha",
    "Jonas",
    "Chloé",
    "Kenji",
    "Priya",
    "Lars",
    "Emma",
    "Omar",
    "Lucía",
    "Noah",
    "Ingrid",
    "Tomasz",
    "Amara",
    "Yusuf",
    "Elena",
    "Finn",
]
LAST = [
    "Whitfield",
    "Okafor",
    "Müller",
    "García",
    "Dubois",
    "Rossi",
    "Tanaka",
    "Kowalski",
    "Nguyen",
    "Johansson",
    "van Dijk",
    "Haddad",
    "O'Brien",
    "Silva",
    "Novak",
    "Schmidt",
]
DOMAINS = [
    "acme.io",
    "gmail.com",
    "outlook.de",
    "orange.fr",
    "yahoo.co.uk",
    "mail.nl",
    "correo.es",
    "company.com",
    "hey.com",
    "proton.me",
]
LOCALES = {"en-US": "US", "en-GB": "GB", "de-DE": "DE", "fr-FR": "FR", "es-ES": "ES", "nl-NL": "NL"}
IBAN_FORMATS = {"DE": "n18", "GB": "a4n14", "FR": "n23", "NL": "a4n10", "ES": "n20", "IT": "a1n22"}


def _phone(rng: random.Random, region: str, intl: bool) -> str:
    while True:
        ex = pn.example_number_for_type(
            region, rng.choice([pn.PhoneNumberType.MOBILE, pn.PhoneNumberType.FIXED_LINE])
        )
        national = str(ex.national_number)
        keep = max(2, len(national) - 6)
        digits = national[:keep] + "".join(rng.choice(string.digits) for _ in national[keep:])
        num = pn.parse(f"+{ex.country_code}{digits}", None)
        if not pn.is_valid_number(num):
            continue
        from replayable._pii_detect import phone_reserved

        if phone_reserved(str(num.national_number), num.country_code):
            continue
        fmt = pn.PhoneNumberFormat.INTERNATIONAL if intl else pn.PhoneNumberFormat.NATIONAL
        text = pn.format_number(num, fmt)
        if region == "US" and not intl and rng.random() < 0.3:
            text = text.replace("(", "").replace(") ", "-")
        return str(text)


def _luhn_complete(body: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return body + str((10 - total % 10) % 10)


def _card(rng: random.Random, valid: bool = True) -> str:
    prefix, length = rng.choice([("4", 16), ("51", 16), ("55", 16), ("37", 15), ("6011", 16)])
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    digits = _luhn_complete(body)
    if not valid:
        digits = digits[:-1] + str((int(digits[-1]) + 1) % 10)
    if length == 15:
        groups = [digits[:4], digits[4:10], digits[10:]]
    else:
        groups = [digits[i : i + 4] for i in range(0, 16, 4)]
    return rng.choice([" ", "-", ""]).join(groups)


def _iban(rng: random.Random, country: str, valid: bool = True) -> str:
    spec = IBAN_FORMATS[country]
    bban = ""
    i = 0
    while i < len(spec):
        kind, n = spec[i], int("".join(c for c in spec[i + 1 : i + 3] if c.isdigit()))
        i += 1 + len(str(n))
        pool = string.ascii_uppercase if kind == "a" else string.digits
        bban += "".join(rng.choice(pool) for _ in range(n))
    if bban[:4].strip("0X") == "":
        bban = "1" + bban[1:]
    moved = bban + country + "00"
    check = 98 - int("".join(str(int(c, 36)) for c in moved)) % 97
    if not valid:
        check = (check + 1) % 100
    iban = f"{country}{check:02d}{bban}"
    return " ".join(iban[i : i + 4] for i in range(0, len(iban), 4)) if rng.random() < 0.7 else iban


def _ip(rng: random.Random) -> str:
    if rng.random() < 0.7:
        while True:
            parts = [
                rng.randint(1, 223),
                rng.randint(0, 255),
                rng.randint(0, 255),
                rng.randint(1, 254),
            ]
            if parts[0] not in (10, 127, 169, 172, 192, 198, 203):
                return ".".join(map(str, parts))
    groups = ["2a02", f"{rng.randint(0, 0xFFFF):x}"] + [
        f"{rng.randint(0, 0xFFFF):x}" for _ in range(3)
    ]
    return ":".join(groups) + "::" + f"{rng.randint(1, 0xFFFF):x}"


def _ssn(rng: random.Random) -> str:
    while True:
        area = rng.randint(1, 899)
        if area != 666:
            return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


def _email(rng: random.Random, first: str, last: str) -> str:
    def ascii_(s: str) -> str:
        table = str.maketrans("éüíóáç'", "euioac-")
        return s.lower().translate(table).replace(" ", "")

    local = rng.choice(
        [
            f"{ascii_(first)}.{ascii_(last)}",
            f"{ascii_(first)[0]}{ascii_(last)}",
            f"{ascii_(first)}{rng.randint(1, 99)}",
            f"{ascii_(first)}+orders",
        ]
    )
    return f"{local}@{rng.choice(DOMAINS)}"


NEGATIVES = [
    "Order #{order} shipped on {date} at 14:05:33 UTC via tracking 1Z999AA1{track}.",
    "Invoice INV-{order} totals EUR 1.249,50; due {date}.",
    "Build v2.14.{minor} (commit {sha}) deployed to 3 pods; p95 latency 182.4 ms.",
    "Request id {uuid} took 0.734 s; retry after 30 seconds.",
    "Your ticket {order} is priority 2; SLA 48h, queue position 17.",
    "Temperature 0.2, top_p 0.95, max_tokens 1024, seed 12345678.",
    "Card ending 4242 was charged $1,299.00 on {date}.",
    "ISBN 978-3-16-148410-0 is out of stock until {date}.",
    "Reference {badcard} could not be verified.",
    "Transfer ref {badiban} was rejected by the bank.",
    "Contact support@example.com or see https://docs.example.org/v1.2.3/guide.",
    "Lat 48.8566, lon 2.3522; altitude 35 m; timestamp 1733560000.123.",
    "SKU 4006381333931 restocked: 120 units, batch 2026-11-30.",
    "Your one-time code is 482913; it expires in 10 minutes.",
]


def _negative(rng: random.Random) -> str:
    return rng.choice(NEGATIVES).format(
        order=rng.randint(100000, 99999999),
        date=f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        track=rng.randint(10000000, 99999999),
        minor=rng.randint(0, 40),
        sha="".join(rng.choice("0123456789abcdef") for _ in range(12)),
        uuid="-".join(
            "".join(rng.choice("0123456789abcdef") for _ in range(n)) for n in (8, 4, 4, 4, 12)
        ),
        badcard=_card(rng, valid=False),
        badiban=_iban(rng, rng.choice(list(IBAN_FORMATS)), valid=False),
    )


def _item(rng: random.Random, n: int) -> dict[str, Any]:  # noqa: C901 - split once the pii work in flight lands
    locale = rng.choice(list(LOCALES))
    region = LOCALES[locale]
    first, last = rng.choice(FIRST), rng.choice(LAST)
    name = f"{first} {last}"
    labels: list[dict[str, str]] = []

    def pick(kind: str) -> str:
        if kind == "email":
            v = _email(rng, first, last)
        elif kind == "phone":
            v = _phone(
                rng,
                region if rng.random() < 0.8 else rng.choice(list(LOCALES.values())),
                intl=rng.random() < 0.5,
            )
            if not v.startswith("+") and pn.region_code_for_number(pn.parse(v, region)) != region:
                v = _phone(rng, region, intl=True)
        elif kind == "card":
            v = _card(rng)
        elif kind == "iban":
            v = _iban(rng, rng.choice(list(IBAN_FORMATS)))
        elif kind == "ip":
            v = _ip(rng)
        else:
            v = _ssn(rng)
        labels.append({"kind": kind, "value": v})
        return v

    shape = n % 5
    kinds = rng.sample(["email", "phone", "card", "iban", "ip", "ssn"], k=rng.randint(0, 3))
    if region != "US" and "ssn" in kinds:
        kinds.remove("ssn")
    values = {k: pick(k) for k in kinds}
    neg = _negative(rng)
    if shape == 0:  # a chat message
        bits = [f"Hi, this is {first}."]
        for k, v in values.items():
            bits.append(
                {
                    "email": f"Please write to {v}.",
                    "phone": f"You can call me on {v}.",
                    "card": f"I paid with {v} yesterday.",
                    "iban": f"Refund to {v} please.",
                    "ip": f"I logged in from {v} and got locked out.",
                    "ssn": f"My SSN is {v} for the tax form.",
                }[k]
            )
        bits.append(neg)
        text = " ".join(bits)
        source = "chat"
    elif shape == 1:  # a tool call's arguments
        args: dict[str, Any] = {"customer": name, "note": neg}
        for k, v in values.items():
            args[
                {
                    "email": "to",
                    "phone": "msisdn",
                    "card": "pan",
                    "iban": "iban",
                    "ip": "client_ip",
                    "ssn": "ssn",
                }[k]
            ] = v
        text = json.dumps({"tool": "crm_update", "arguments": args}, ensure_ascii=False)
        source = "tool"
    elif shape == 2:  # a CRM record as a tool result
        record: dict[str, Any] = {
            "id": rng.randint(1000, 99999),
            "name": name,
            "created_at": "2026-03-14T09:26:53Z",
            "tier": "gold",
            "lifetime_value": round(rng.uniform(10, 9999), 2),
        }
        for k, v in values.items():
            record[k] = v
        record["last_note"] = neg
        text = json.dumps(record, ensure_ascii=False)
        source = "crm"
    elif shape == 3:  # free text (an email body, a transcript)
        greet = {
            "en-US": "Hello",
            "en-GB": "Dear team",
            "de-DE": "Hallo",
            "fr-FR": "Bonjour",
            "es-ES": "Hola",
            "nl-NL": "Hallo",
        }[locale]
        body = [f"{greet}, {neg}"]
        for k, v in values.items():
            body.append(
                {
                    "de-DE": f"Meine Angabe ({k}): {v}.",
                    "fr-FR": f"Mon {k} : {v}.",
                    "es-ES": f"Mi {k}: {v}.",
                    "nl-NL": f"Mijn {k}: {v}.",
                }.get(locale, f"For the record, my {k} is {v}.")
            )
        body.append(f"— {name}")
        text = "\n".join(body)
        source = "free"
    else:  # a model's answer quoting a tool result
        quoted = ", ".join(f"{k}={v}" for k, v in values.items()) or "no contact details"
        text = f"I found {name}'s account ({quoted}). {neg} Shall I proceed?"
        source = "llm"
    if source != "chat":
        labels.append({"kind": "name", "value": name})
    return {
        "id": n,
        "locale": locale,
        "region": region,
        "source": source,
        "text": text,
        "labels": labels,
        "name": name,
    }


def build(count: int = 400, seed: int = 20261207) -> list[dict[str, Any]]:
    """The corpus: ``count`` items, seeded."""
    rng = random.Random(seed)
    return [_item(rng, n) for n in range(count)]


if __name__ == "__main__":
    items = build()
    OUT.write_text(json.dumps(items, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    counts: dict[str, int] = {}
    for it in items:
        for lab in it["labels"]:
            counts[lab["kind"]] = counts.get(lab["kind"], 0) + 1
    print(f"wrote {len(items)} items to {OUT}: {counts}")
