"""Deterministic sample data in the exact layout of the Rakuten France challenge.

Writes ``X_train_update.csv`` (unnamed index, designation, description, productid, imageid),
``Y_train_CVw08PX.csv`` (unnamed index, prdtypecode) and
``images/image_train/image_<imageid>_product_<productid>.jpg`` (500x500 JPEG), plus the
matching ``X_test_update.csv`` / ``images/image_test`` split, so the loader runs unchanged
on the real set.

The class signal is split between the two modalities on purpose. The 27 codes form 9
families of 3 (books, video games, garden ...). The text always names the family and names
the exact class only half of the time; the image's shape (a red disc, a green square or a
blue triangle) tells which member of the family it is, and its background tint tells the
family only half of the time. Text alone or image alone is therefore ambiguous; only the
concatenated model can be right on most rows, which is what the sample data must prove.

    python -m training_job.sample_data --out data/sample --rows 2700
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from rakuten_common.labels import PRDTYPECODES, TRAIN_COUNTS

X_TRAIN, Y_TRAIN, X_TEST = "X_train_update.csv", "Y_train_CVw08PX.csv", "X_test_update.csv"
REAL_TRAIN_ROWS = 84_916

# family name, words shared by the family, then per member: (code, words naming that class)
FAMILIES: list[tuple[str, list[str], list[tuple[int, list[str]]]]] = [
    ("livres", ["livre", "roman", "auteur", "édition", "pages"], [
        (10, ["occasion", "poche", "ancien"]), (2705, ["neuf", "broché", "nouveauté"]),
        (2403, ["lot", "collection", "intégrale"])]),
    ("presse", ["papier", "numéro", "revue", "feuillet"], [
        (2280, ["magazine", "hebdomadaire", "mensuel"]), (2522, ["cahier", "stylo", "agenda"]),
        (1160, ["carte", "booster", "rare"])]),
    ("jeux vidéo", ["jeu", "vidéo", "joueur", "niveau"], [
        (40, ["cartouche", "import", "pal"]), (2462, ["pack", "lot", "console"]),
        (2905, ["téléchargement", "pc", "steam"])]),
    ("gaming", ["manette", "écran", "usb", "câble"], [
        (50, ["accessoire", "support", "chargeur"]), (60, ["console", "portable", "rétro"]),
        (1300, ["drone", "hélice", "télécommande"])]),
    ("figurines", ["figurine", "personnage", "série", "peinte"], [
        (1140, ["pop", "vinyl", "manga"]), (1180, ["warhammer", "rôle", "dé"]),
        (1281, ["plateau", "société", "famille"])]),
    ("enfance", ["enfant", "bébé", "doux", "âge"], [
        (1280, ["jouet", "peluche", "éveil"]), (1301, ["chaussette", "body", "naissance"]),
        (1320, ["poussette", "biberon", "siège"])]),
    ("maison", ["maison", "intérieur", "salon", "style"], [
        (1560, ["meuble", "table", "étagère"]), (1920, ["coussin", "housse", "drap"]),
        (2060, ["décoration", "cadre", "bougie"])]),
    ("jardin", ["jardin", "extérieur", "terrasse", "résistant"], [
        (2582, ["salon", "transat", "parasol"]), (2583, ["piscine", "spa", "filtration"]),
        (2585, ["tondeuse", "sécateur", "outil"])]),
    ("plein air", ["nature", "animal", "plein", "air"], [
        (1302, ["trampoline", "balançoire", "ballon"]), (1940, ["café", "chocolat", "bio"]),
        (2220, ["chien", "chat", "croquettes"])]),
]
SHAPES = ("disc", "square", "triangle")
SHAPE_COLOURS = ((190, 40, 40), (40, 150, 60), (40, 60, 190))
FAMILY_TINTS = ((250, 235, 215), (220, 235, 250), (235, 250, 220), (250, 220, 235), (240, 240, 200),
                (215, 250, 245), (245, 215, 250), (230, 230, 230), (250, 245, 180))
FILLER = ["qualité", "produit", "idéal", "cadeau", "original", "pratique", "marque", "garantie",
          "rapide", "livraison", "couleur", "taille", "modèle", "authentique", "excellent"]
ADJECTIVES = ["très bon état", "comme neuf", "état correct", "garanti", "édition limitée", ""]
HTML_TEMPLATES = [
    "<p>{a}</p><p>{b}</p>",
    "{a}<br />{b}<br />",
    "<b>{a}</b> &ndash; {b}",
    "{a} {b}",
    "<ul><li>{a}</li><li>{b}</li></ul>",
]
ENTITIES = {"é": "&eacute;", "è": "&egrave;", "à": "&agrave;", "ê": "&ecirc;", "ô": "&ocirc;"}

# How much of the class signal each modality carries.
TEXT_NAMES_CLASS = 0.5      # probability that the text contains a word of the exact class
IMAGE_SHOWS_MEMBER = 0.9    # probability that the shape (form and colour) is the class's own
IMAGE_SHOWS_FAMILY = 0.5    # probability that the background tint is the family's own
EMPTY_DESCRIPTION = 0.35    # share of empty descriptions, as in the real set

CLASS_INFO = {code: (family_index, member_index, family_words, class_words)
              for family_index, (_, family_words, members) in enumerate(FAMILIES)
              for member_index, (code, class_words) in enumerate(members)}
assert sorted(CLASS_INFO) == list(PRDTYPECODES)


def class_counts(rows: int, minimum: int = 6) -> dict[int, int]:
    """Per-class row counts proportional to the real set's imbalance (at least ``minimum``)."""
    counts = {code: max(minimum, round(rows * n / REAL_TRAIN_ROWS)) for code, n in TRAIN_COUNTS.items()}
    return counts


def _words(rng: np.random.Generator, pool: list[str], n: int) -> list[str]:
    return [pool[i] for i in rng.integers(0, len(pool), n)]


def _escape_some(rng: np.random.Generator, text: str) -> str:
    """Write accents as HTML entities about half the time, like many real descriptions."""
    if rng.random() < 0.5:
        for char, entity in ENTITIES.items():
            text = text.replace(char, entity)
    return text


def make_text(rng: np.random.Generator, code: int) -> tuple[str, str]:
    """A French (designation, description) pair for ``code``."""
    _, _, family_words, class_words = CLASS_INFO[code]
    words = _words(rng, family_words, 2) + _words(rng, FILLER, 2)
    if rng.random() < TEXT_NAMES_CLASS:
        words.append(class_words[rng.integers(0, len(class_words))])
    rng.shuffle(words)
    designation = " ".join(words).capitalize()
    adjective = ADJECTIVES[rng.integers(0, len(ADJECTIVES))]
    if adjective:
        designation += f" - {adjective}"
    designation += f" réf. {rng.integers(1000, 99999)}"
    if rng.random() < EMPTY_DESCRIPTION:
        return designation, ""
    sentence_a = " ".join(_words(rng, family_words + FILLER, 6)).capitalize() + "."
    sentence_b = " ".join(_words(rng, FILLER, 5)).capitalize() + "."
    template = HTML_TEMPLATES[rng.integers(0, len(HTML_TEMPLATES))]
    return designation, _escape_some(rng, template.format(a=sentence_a, b=sentence_b))


def _jitter(rng: np.random.Generator, colour: tuple[int, int, int], amount: int) -> tuple[int, ...]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


def make_image(rng: np.random.Generator, code: int, size: int = 500) -> Image.Image:
    """A product-photo stand-in: a tinted background and one coloured shape.

    The shape and its colour mostly tell the class's member index within its family; the
    background tint tells the family only part of the time.
    """
    family, member, _, _ = CLASS_INFO[code]
    shown = member if rng.random() < IMAGE_SHOWS_MEMBER else int(rng.integers(0, 3))
    tint = FAMILY_TINTS[family] if rng.random() < IMAGE_SHOWS_FAMILY else FAMILY_TINTS[rng.integers(0, 9)]
    image = Image.new("RGB", (size, size), _jitter(rng, tint, 20))
    draw = ImageDraw.Draw(image)
    colour = _jitter(rng, SHAPE_COLOURS[shown], 40)
    radius = int(size * rng.uniform(0.22, 0.38))
    cx, cy = (int(size / 2 + rng.uniform(-0.1, 0.1) * size) for _ in range(2))
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if SHAPES[shown] == "disc":
        draw.ellipse(box, fill=colour)
    elif SHAPES[shown] == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=colour)
    # Low-frequency sensor-like noise: drawn at a quarter of the size, then upsampled.
    grain = rng.integers(-24, 25, (size // 4, size // 4, 3), dtype=np.int16) + 128
    noise = np.asarray(Image.fromarray(grain.astype(np.uint8)).resize((size, size), Image.Resampling.BILINEAR),
                       dtype=np.int16) - 128
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8))


def _write_split(out: Path, split: str, codes: list[int], rng: np.random.Generator,
                 first_index: int, missing_images: int, image_size: int) -> list[list]:
    image_dir = out / "images" / f"image_{split}"
    image_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    skip = set(rng.choice(len(codes), size=min(missing_images, len(codes)), replace=False).tolist())
    for position, code in enumerate(codes):
        index = first_index + position
        productid, imageid = 200_000_000 + index * 7, 1_000_000_000 + index * 13
        designation, description = make_text(rng, code)
        image = make_image(rng, code, image_size)
        if position not in skip:
            image.save(image_dir / f"image_{imageid}_product_{productid}.jpg", quality=85)
        rows.append([index, designation, description, productid, imageid])
        if (position + 1) % 500 == 0 or position + 1 == len(codes):
            print(f"  {split}: {position + 1}/{len(codes)} products written", flush=True)
    return rows


def generate(out: Path, rows: int = 2700, test_rows: int = 0, seed: int = 0,
             missing_images: int = 0, image_size: int = 500) -> Path:
    """Write a sample dataset of about ``rows`` training rows under ``out``; return ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    codes = [code for code, n in class_counts(rows).items() for _ in range(n)]
    rng.shuffle(codes)
    header = ["", "designation", "description", "productid", "imageid"]
    train = _write_split(out, "train", codes, rng, 0, missing_images, image_size)
    with open(out / X_TRAIN, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *train])
    with open(out / Y_TRAIN, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["", "prdtypecode"], *[[i, c] for i, c in enumerate(codes)]])
    if test_rows:
        test_codes = rng.choice(list(PRDTYPECODES), size=test_rows).tolist()
        test = _write_split(out, "test", test_codes, rng, len(codes), 0, image_size)
        with open(out / X_TEST, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([header, *test])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("data/sample"), help="dataset folder")
    parser.add_argument("--rows", type=int, default=2700, help="approximate training rows")
    parser.add_argument("--test-rows", type=int, default=100, help="rows of the unlabelled test split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--missing-images", type=int, default=0,
                        help="leave out this many training images (to exercise the loader's report)")
    args = parser.parse_args(argv)
    print(f"Generating sample Rakuten data into {args.out} (seed {args.seed})", flush=True)
    generate(args.out, args.rows, args.test_rows, args.seed, args.missing_images)
    return 0


if __name__ == "__main__":
    sys.exit(main())
