"""Write the built-in extraction sample: short synthetic order messages and their fields as JSON.

    python scripts/make_extraction_data.py          # rewrites src/tunebench/data/builtin/extraction.jsonl
    python scripts/make_extraction_data.py --check  # exit 1 if the committed file differs from a fresh one

Every message is written from a seeded random choice of sender, product, quantity, city and delivery date,
through one of several phrasings; the target is the same facts as a JSON object with the keys name,
product, quantity (a number, written in the message as digits or as a word), city and date (ISO, the year
2026, written in the message as "12 March" or "March 12th"). Deterministic: the same file every time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "tunebench" / "data" / "builtin" / "extraction.jsonl"
SEED = 24
N_TRAIN, N_TEST = 100, 50
YEAR = 2026

FIRST = ["Maria", "Tom", "Aisha", "Kenji", "Lena", "Omar", "Sofia", "Piotr", "Grace", "Diego", "Hana", "Lucas",
         "Nadia", "Ravi", "Elena", "Samuel", "Ingrid", "Kwame", "Chloe", "Mateo"]
LAST = ["Lopez", "Becker", "Khan", "Sato", "Novak", "Haddad", "Rossi", "Kowalski", "Okafor", "Silva", "Kim",
        "Martin", "Petrova", "Iyer", "Garcia", "Brown", "Larsen", "Mensah", "Dubois", "Fischer"]
PRODUCTS = ["ergonomic chairs", "laptop stands", "USB-C chargers", "standing desks", "monitor arms",
            "wireless keyboards", "desk lamps", "noise-cancelling headsets", "whiteboards", "filing cabinets",
            "webcams", "printer cartridges", "coffee machines", "office plants", "bookshelves"]
CITIES = ["Lisbon", "Berlin", "Osaka", "Nairobi", "Toronto", "Madrid", "Warsaw", "Dublin", "Lagos", "Seoul",
          "Lyon", "Oslo", "Chennai", "Austin", "Porto"]
NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine",
                10: "ten", 12: "twelve", 20: "twenty"}
PHRASINGS = [
    "Hi, this is {name}. Could you send {qty} {product} to our {city} office by {date}? Thanks!",
    "Order request from {name} ({city}): {qty} x {product}, needed on {date}.",
    "{name} here. We need {qty} {product} delivered in {city} on {date}. Let me know if that works.",
    "Please ship {qty} {product} to {city}. Delivery date: {date}. Contact: {name}.",
    "Hello! I'd like to order {qty} {product} for our team in {city}. Can they arrive on {date}? Best, {name}",
    "Quick one: {qty} {product}, {city}, {date}. Signed, {name}",
    "Dear sales team, {name} from the {city} branch would like {qty} {product}. We need them by {date}.",
    "Can we get {qty} {product} to {city} before {date}? Regards, {name}",
]


def ordinal(day: int) -> str:
    suffix = "th" if 11 <= day <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def example(rng: random.Random, index: int, split: str) -> dict:
    name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
    product, city = rng.choice(PRODUCTS), rng.choice(CITIES)
    quantity = rng.choice(list(NUMBER_WORDS)) if rng.random() < 0.3 else rng.randint(1, 60)
    qty_text = NUMBER_WORDS[quantity] if quantity in NUMBER_WORDS and rng.random() < 0.6 else str(quantity)
    date = datetime.date(YEAR, 1, 1) + datetime.timedelta(days=rng.randrange(365))
    month = date.strftime("%B")
    date_text = f"{date.day} {month}" if rng.random() < 0.5 else f"{month} {ordinal(date.day)}"
    message = rng.choice(PHRASINGS).format(name=name, qty=qty_text, product=product, city=city, date=date_text)
    fields = {"name": name, "product": product, "quantity": quantity, "city": city, "date": date.isoformat()}
    return {"id": f"ext-{index:04d}", "split": split, "message": message, "fields": fields}


def rows() -> list[dict]:
    rng = random.Random(SEED)
    splits = ["train"] * N_TRAIN + ["test"] * N_TEST
    return [example(rng, i + 1, split) for i, split in enumerate(splits)]


def text() -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed file instead of writing")
    args = parser.parse_args()
    fresh = text()
    if args.check:
        same = OUT.exists() and OUT.read_text() == fresh
        print(json.dumps({"file": str(OUT), "rows": N_TRAIN + N_TEST, "up_to_date": same}))
        return 0 if same else 1
    OUT.write_text(fresh)
    print(json.dumps({"file": str(OUT), "rows": N_TRAIN + N_TEST}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
