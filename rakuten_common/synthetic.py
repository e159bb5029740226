"""Synthetic Rakuten-like products: a French (designation, description) and a product photo for a code.

The class signal is split between the two modalities on purpose. The 27 codes form 9
families of 3 (books, video games, garden ...). The text always names the family and names
the exact class only half of the time; the image's shape (a red disc, a green square or a
blue triangle) tells which member of the family it is, and its background tint tells the
family only half of the time. Text alone or image alone is therefore ambiguous; only the
concatenated model can be right on most rows.

Used by the sample dataset generator (``training_job.sample_data``), the load tests, the
benchmarks and the tests.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from rakuten_common.labels import PRDTYPECODES

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
