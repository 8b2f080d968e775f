"""``translation``: translate a common English word into French or Spanish.

Words whose translation is ambiguous, or starts with an accented letter (a byte-level BPE
may split its first byte), are left out.
"""

import random

from tlatlas.tasks.base import Example, Family, unique_examples

NAME = "translation"

# (english, french, spanish); None where the translation is ambiguous.
WORDS: tuple[tuple[str, str | None, str | None], ...] = (
    ("dog", "chien", "perro"), ("cat", "chat", "gato"), ("house", "maison", "casa"),
    ("water", "eau", "agua"), ("book", "livre", "libro"), ("red", "rouge", "rojo"),
    ("blue", "bleu", "azul"), ("green", "vert", "verde"), ("black", "noir", "negro"),
    ("white", "blanc", "blanco"), ("sun", "soleil", "sol"), ("moon", "lune", "luna"),
    ("bread", "pain", "pan"), ("milk", "lait", "leche"), ("cheese", "fromage", "queso"),
    ("apple", "pomme", "manzana"), ("city", "ville", "ciudad"), ("friend", "ami", "amigo"),
    ("man", "homme", "hombre"), ("woman", "femme", "mujer"), ("child", "enfant", None),
    ("father", "père", "padre"), ("mother", "mère", "madre"), ("brother", "frère", "hermano"),
    ("day", "jour", None), ("night", "nuit", "noche"), ("hand", "main", "mano"),
    ("head", "tête", "cabeza"), ("door", "porte", "puerta"), ("window", "fenêtre", "ventana"),
    ("table", "table", "mesa"), ("chair", "chaise", "silla"), ("bed", "lit", "cama"),
    ("bird", "oiseau", None), ("horse", "cheval", "caballo"), ("cow", "vache", "vaca"),
    ("pig", "cochon", "cerdo"), ("chicken", "poulet", "pollo"), ("flower", "fleur", "flor"),
    ("rain", "pluie", "lluvia"), ("snow", "neige", "nieve"), ("fire", "feu", "fuego"),
    ("king", "roi", "rey"), ("queen", "reine", "reina"), ("beach", "plage", "playa"),
    ("sea", "mer", "mar"), ("mountain", "montagne", "montaña"), ("money", "argent", "dinero"),
    ("time", "temps", "tiempo"), ("love", "amour", "amor"), ("good", "bon", "bueno"),
    ("new", "nouveau", "nuevo"), ("hot", "chaud", "caliente"), ("one", "un", "uno"),
    ("two", "deux", "dos"), ("three", "trois", "tres"), ("four", "quatre", "cuatro"),
    ("five", "cinq", "cinco"), ("Monday", "lundi", "lunes"), ("Sunday", "dimanche", "domingo"),
    ("hello", "bonjour", "hola"), ("thanks", "merci", "gracias"), ("wine", "vin", "vino"),
    ("beer", "bière", "cerveza"), ("coffee", "café", "café"), ("garden", "jardin", None),
    ("kitchen", "cuisine", "cocina"), ("street", "rue", "calle"), ("train", "train", "tren"),
    ("boat", "bateau", "barco"), ("shoe", "chaussure", "zapato"), ("hat", "chapeau", "sombrero"),
    ("shirt", "chemise", "camisa"), ("key", "clé", "llave"), ("word", "mot", "palabra"),
    ("world", "monde", "mundo"), ("week", "semaine", "semana"), ("month", "mois", "mes"),
    ("girl", "fille", None), ("boy", "garçon", None), ("food", "nourriture", "comida"),
    ("car", "voiture", None), ("dinner", "dîner", "cena"), ("cold", "froid", "frío"),
    ("big", "grand", "grande"), ("small", "petit", "pequeño"), ("heart", "cœur", "corazón"),
    ("sister", "sœur", "hermana"), ("tree", "arbre", None), ("church", None, "iglesia"),
    ("star", None, "estrella"), ("summer", None, "verano"), ("winter", "hiver", "invierno"),
)
LANGUAGES = {"French": 1, "Spanish": 2}


def items() -> tuple[tuple[str, str, str], ...]:
    """``(english, language, translation)`` for every word with a known translation."""
    return tuple((row[0], lang, row[col]) for row in WORDS for lang, col in LANGUAGES.items()
                 if row[col] is not None)


SYNTHETIC = (
    "English: {w}\n{lang}:",
    "{shot}\nEnglish: {w}\n{lang}:",
    "{w} (English) = {lang}:",
    "Translate from English to {lang}. {w} =>",
)
"""``{shot}`` is a solved ``English: ...\\n{lang}: ...`` pair in the same language."""

NATURAL = (
    "Q: How do you say {w} in {lang}?\nA:",
    "In {lang}, the word for {w} is",
    "My {lang} teacher taught me that {w} in {lang} is",
    "User: Translate the English word {w} into {lang}.\nAssistant: The {lang} word is",
    "If you want to say {w} in {lang}, you say",
    "Question: what is the {lang} translation of {w}?\nAnswer:",
    "On my trip I learned a new {lang} word. The word for {w} is",
)


def _make(table: tuple[str, ...], prefix: str, rng: random.Random, i: int) -> Example:
    t = i % len(table)
    pool = items()
    word, lang, target = rng.choice(pool)
    demo_word, _, demo_target = rng.choice([p for p in pool if p[1] == lang and p[0] != word])
    shot = f"English: {demo_word}\n{lang}: {demo_target}"
    prompt = table[t].format(w=word, lang=lang, shot=shot)
    return Example(family=NAME, prompt=prompt, answer=f" {target}",
                   meta={"template": f"{prefix}{t}", "language": lang})


def synthetic(rng: random.Random, n: int) -> list[Example]:
    """``English: dog\\nFrench:`` -> `` chien`` and variants."""
    return unique_examples(rng, n, lambda r, i: _make(SYNTHETIC, "tr", r, i))


def natural(rng: random.Random, n: int) -> list[Example]:
    """Questions, chat turns and sentences about a word's translation."""
    return unique_examples(rng, n, lambda r, i: _make(NATURAL, "nl", r, i))


FAMILY = Family(
    name=NAME,
    description="Translate a common English word into French or Spanish.",
    synthetic=synthetic,
    natural=natural,
)
"""Registered by ``tlatlas.tasks`` in canonical order."""
