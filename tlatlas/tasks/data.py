"""Shared vocabulary for the task families: countries, names and common words.

Only well-known, unambiguous facts: a country whose capital, currency or official language
is disputed, plural or recently changed has ``None`` in that column and is left out of
that relation.
"""

from dataclasses import dataclass

from tlatlas.errors import UnknownNameError


@dataclass(frozen=True, kw_only=True)
class Country:
    """One country and the facts the ``factual`` family asks about."""

    name: str
    """Name as it reads after "of" ("France", "the United States")."""
    capital: str | None
    """Capital city, or ``None`` when ambiguous."""
    currency: str | None
    """Currency in lower case as it reads after "the" ("euro", "yen")."""
    language: str | None
    """Main official language, or ``None`` when there are several."""


def _c(name: str, capital: str | None, currency: str | None, language: str | None) -> Country:
    return Country(name=name, capital=capital, currency=currency, language=language)


COUNTRIES: tuple[Country, ...] = (
    _c("France", "Paris", "euro", "French"),
    _c("Germany", "Berlin", "euro", "German"),
    _c("Italy", "Rome", "euro", "Italian"),
    _c("Spain", "Madrid", "euro", "Spanish"),
    _c("Portugal", "Lisbon", "euro", "Portuguese"),
    _c("Greece", "Athens", "euro", "Greek"),
    _c("Ireland", "Dublin", "euro", None),
    _c("Austria", "Vienna", "euro", "German"),
    _c("Belgium", "Brussels", "euro", None),
    _c("the Netherlands", "Amsterdam", "euro", "Dutch"),
    _c("Finland", "Helsinki", "euro", None),
    _c("Estonia", "Tallinn", "euro", "Estonian"),
    _c("Latvia", "Riga", "euro", "Latvian"),
    _c("Lithuania", "Vilnius", "euro", "Lithuanian"),
    _c("Slovakia", "Bratislava", "euro", "Slovak"),
    _c("Slovenia", "Ljubljana", "euro", "Slovenian"),
    _c("Poland", "Warsaw", "zloty", "Polish"),
    _c("Hungary", "Budapest", "forint", "Hungarian"),
    _c("Romania", "Bucharest", "leu", "Romanian"),
    _c("Bulgaria", "Sofia", None, "Bulgarian"),
    _c("Serbia", "Belgrade", "dinar", "Serbian"),
    _c("Croatia", "Zagreb", None, "Croatian"),
    _c("Sweden", "Stockholm", "krona", "Swedish"),
    _c("Norway", "Oslo", "krone", "Norwegian"),
    _c("Denmark", "Copenhagen", "krone", "Danish"),
    _c("Iceland", "Reykjavik", "krona", "Icelandic"),
    _c("Switzerland", "Bern", "franc", None),
    _c("the United Kingdom", "London", "pound", "English"),
    _c("Russia", "Moscow", "ruble", "Russian"),
    _c("Turkey", "Ankara", "lira", "Turkish"),
    _c("Egypt", "Cairo", "pound", "Arabic"),
    _c("Morocco", "Rabat", "dirham", None),
    _c("Algeria", "Algiers", "dinar", None),
    _c("Tunisia", "Tunis", "dinar", "Arabic"),
    _c("Libya", "Tripoli", "dinar", "Arabic"),
    _c("Sudan", "Khartoum", "pound", None),
    _c("Kenya", "Nairobi", "shilling", None),
    _c("Uganda", "Kampala", "shilling", None),
    _c("Nigeria", "Abuja", "naira", "English"),
    _c("Ghana", "Accra", "cedi", "English"),
    _c("Senegal", "Dakar", None, "French"),
    _c("Zimbabwe", "Harare", None, None),
    _c("Ethiopia", "Addis Ababa", "birr", None),
    _c("South Africa", None, "rand", None),
    _c("Saudi Arabia", "Riyadh", "riyal", "Arabic"),
    _c("Qatar", "Doha", "riyal", "Arabic"),
    _c("Iraq", "Baghdad", "dinar", None),
    _c("Syria", "Damascus", "pound", "Arabic"),
    _c("Jordan", "Amman", "dinar", "Arabic"),
    _c("Lebanon", "Beirut", "pound", "Arabic"),
    _c("Iran", "Tehran", "rial", "Persian"),
    _c("Afghanistan", "Kabul", "afghani", None),
    _c("Pakistan", "Islamabad", "rupee", None),
    _c("India", "New Delhi", "rupee", None),
    _c("Nepal", "Kathmandu", "rupee", "Nepali"),
    _c("Bangladesh", "Dhaka", "taka", "Bengali"),
    _c("China", "Beijing", "yuan", "Chinese"),
    _c("Japan", "Tokyo", "yen", "Japanese"),
    _c("South Korea", "Seoul", "won", "Korean"),
    _c("North Korea", "Pyongyang", "won", "Korean"),
    _c("Mongolia", None, "tugrik", "Mongolian"),
    _c("Thailand", "Bangkok", "baht", "Thai"),
    _c("Vietnam", "Hanoi", "dong", "Vietnamese"),
    _c("Indonesia", "Jakarta", "rupiah", "Indonesian"),
    _c("the Philippines", "Manila", "peso", None),
    _c("Malaysia", "Kuala Lumpur", "ringgit", "Malay"),
    _c("Australia", "Canberra", "dollar", "English"),
    _c("New Zealand", "Wellington", "dollar", None),
    _c("Canada", "Ottawa", "dollar", None),
    _c("the United States", "Washington", "dollar", "English"),
    _c("Mexico", "Mexico City", "peso", "Spanish"),
    _c("Cuba", "Havana", "peso", "Spanish"),
    _c("Jamaica", "Kingston", "dollar", "English"),
    _c("Colombia", None, "peso", "Spanish"),
    _c("Venezuela", "Caracas", None, "Spanish"),
    _c("Peru", "Lima", "sol", "Spanish"),
    _c("Chile", "Santiago", "peso", "Spanish"),
    _c("Argentina", "Buenos Aires", "peso", "Spanish"),
    _c("Brazil", None, "real", "Portuguese"),
    _c("Uruguay", "Montevideo", "peso", "Spanish"),
)
"""About 80 countries; each relation has at least 50 rows."""


def facts(relation: str) -> tuple[tuple[str, str], ...]:
    """``(country, value)`` pairs for ``relation`` in ``capital``, ``currency``, ``language``."""
    if relation not in ("capital", "currency", "language"):
        raise UnknownNameError(f"unknown relation {relation!r}; known: capital, currency, language")
    return tuple(
        (c.name, value) for c in COUNTRIES if (value := getattr(c, relation)) is not None
    )


NAMES: tuple[str, ...] = (
    "Mary", "John", "Alice", "Bob", "Tom", "James", "Sarah", "David", "Emma", "Michael",
    "Anna", "Paul", "Laura", "Mark", "Kate", "Peter", "Lisa", "Daniel", "Rachel", "Chris",
    "Jane", "Steve", "Linda", "George", "Susan", "Frank", "Helen", "Jack", "Amy", "Ben",
    "Lucy", "Sam", "Emily", "Adam", "Julia", "Henry", "Grace", "Kevin", "Sophie", "Eric",
)
"""Common English first names (one token with a leading space in most BPE vocabularies)."""

SURNAMES: tuple[str, ...] = (
    "Smith", "Johnson", "Brown", "Taylor", "Miller", "Wilson", "Moore", "Clark", "Lewis",
    "Walker", "Hall", "Young", "King", "Wright", "Green", "Baker", "Adams", "Nelson",
    "Hill", "Campbell", "Parker", "Evans", "Turner", "Collins", "Stewart", "Morris",
)
"""Common English surnames."""

CITIES: tuple[str, ...] = (
    "Paris", "London", "Rome", "Berlin", "Madrid", "Tokyo", "Boston", "Chicago", "Sydney",
    "Toronto", "Dublin", "Vienna", "Prague", "Lisbon", "Oslo", "Cairo", "Denver", "Seattle",
    "Austin", "Miami", "Dallas", "Houston", "Moscow", "Athens",
)
"""Well-known cities used as JSON values."""

COLORS: tuple[str, ...] = (
    "red", "blue", "green", "yellow", "black", "white", "orange", "purple", "pink", "brown",
    "gray", "gold", "silver",
)
"""Basic colour words."""

WORDS: tuple[str, ...] = (
    "apple", "river", "house", "table", "green", "music", "water", "chair", "paper", "light",
    "stone", "bread", "cloud", "horse", "money", "night", "dream", "glass", "smile", "tiger",
    "beach", "heart", "plant", "train", "world", "sugar", "phone", "clock", "snake", "lemon",
    "dog", "cat", "sun", "car", "box", "hat", "cup", "pen", "map", "bed", "bus", "key",
    "fish", "bird", "tree", "road", "book", "door", "milk", "rain", "snow", "fire", "game",
    "ship", "ring", "star", "moon", "king", "song", "shoe", "coat", "lamp", "desk", "farm",
    "garden", "window", "summer", "winter", "yellow", "orange", "doctor", "friend", "forest",
    "castle", "rocket", "silver", "bottle", "pocket", "dinner", "letter", "flower", "island",
    "people", "school", "market", "police", "secret", "animal", "spring", "basket", "little",
    "hello", "happy", "water", "money", "party", "story", "sleep", "house", "power", "ocean",
    "street", "family", "planet", "mother", "father", "sister", "travel", "coffee", "cookie",
)
"""Common English words of three to six letters (some repeat; callers dedupe)."""

LETTERS: tuple[str, ...] = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
"""Upper-case Latin letters."""
