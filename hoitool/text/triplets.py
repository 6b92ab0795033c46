"""Captions -> <interaction, object> triplets by a fixed, documented rule set (docs/vlm-import.md#rules).

CL-HOI asks the teacher's language model to list the triplets of its own caption; this module is the
offline, deterministic stand-in for that step, for captions imported without triplets. No tagger, no
model: a small lexicon and these rules, applied in order.

1. Normalise: lowercase; the caption is cut into clauses at ``. , ; : ! ?`` and at the words
   ``and, while, whilst, then, but, as, who, which, where, when``.
2. Scan a clause for verbs. A token is a verb when it is not preceded by a determiner or possessive
   (``a painting`` is a noun) and it is (a) an ``-ing`` form of at least five letters that is not in
   :data:`ING_NOUNS` (``sing``-like lemmas of :data:`VERBS` are lemmas), or, when it does not follow a
   preposition other than ``to`` (``a glass of milk``), (b) a lemma of :data:`VERBS` or (c) such a lemma
   plus ``-s``/``-es``/``-ies`` (``opens``, ``washes``, ``carries``). Auxiliaries are never verbs.
3. Lemma of an ``-ing`` form: :data:`IRREGULAR` first; else drop ``ing``; undouble a final doubled
   ``b d g m n p r t`` (``running`` -> ``run``, but ``calling`` -> ``call``); add ``e`` when that gives a
   lemma of :data:`E_VERBS` (``making`` -> ``make``).
4. A catenative verb (:data:`CATENATIVE`: ``try``, ``start``, ...) followed by ``to`` or by another
   verb yields nothing; the next verb is taken (``trying to open a door`` -> ``open``).
5. The object is the noun phrase after the verb: skip particles/prepositions (:data:`PARTICLES`) and
   determiners (:data:`DETERMINERS`), then take up to three words until a particle, a determiner, an
   auxiliary or the next verb; its last word is made singular (:func:`singular`). No words: the object
   is ``None`` (an intransitive interaction such as ``walk``).
6. Scanning goes on after the object, so one clause can give several triplets; repeated triplets of a
   caption are kept once, in order of appearance.

Also :func:`parse_triplet_text`: the teacher's own list format, ``"*Swing, Baseball Bat."``.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np


def _words(text: str) -> frozenset[str]:
    """A word list written as one string (easier to read and to extend than a list literal)."""
    return frozenset(text.split())


VERBS = _words("""
add adjust arrange assemble bake bite blow board boil bounce brush build burn buy call carry catch chase check
chop clap clean climb close comb cook cover crack crawl cross cut dance dig dip draw dress drink drive drop dry
eat empty feed fill flip float fly fold follow frost fry get give grab grind hang hit hold hug hunt inspect iron
jump kick kiss knead lick lie lift light load lock look make milk mix move open operate pack paint park pass
peel pet pick pinch place plant play point pour press pull push put race raise reach read release repair ride
rinse roll rotate row rub run sail scoop scrub serve set sew shake shave shovel sip sit skate ski slice slide
smell sniff spin spill spray spread squeeze stab stack stand steer stick stir stop sweep swim swing take talk
taste tear text throw tickle tie tilt tip toss touch turn twist type unfold unlock unscrew use walk wash watch
wave wear wield wipe wrap write
""")
E_VERBS = _words("""
bake bite close dance dive drive file glue hide juggle make move operate paste place pose prepare raise rake
release remove rinse ride rotate serve shake shave skate slice slide smile squeeze stare store take taste tickle
trade type use wave wipe write
""")
IRREGULAR = {"lying": "lie", "dying": "die", "tying": "tie", "adding": "add", "seeing": "see", "being": "be"}
ING_NOUNS = _words("""
anything bedding building ceiling clothing during everything evening king morning nothing painting pudding
ring something spring sibling string thing wedding wing
""")
CATENATIVE = _words("try start begin continue keep want attempt seem appear going go prepare")
AUXILIARIES = _words("""
am is are was were be been being 's 're has have had does do did can could will would may might shall should must
""")
DETERMINERS = _words("""
a an the his her their its my your our some this that these those another one two three four five several many
few both each every other any no
""")
PARTICLES = _words("""
up down on off in into onto at with from to out over through around towards toward across along back away under
inside near by of for behind above below between against about
""")
CLAUSE_WORDS = _words("and while whilst then but as who which where when")
PLURAL_TABLE = {
    "people": "person",
    "men": "man",
    "women": "woman",
    "children": "child",
    "feet": "foot",
    "teeth": "tooth",
    "mice": "mouse",
    "knives": "knife",
    "leaves": "leaf",
    "loaves": "loaf",
    "cookies": "cookie",
    "movies": "movie",
    "pies": "pie",
    "ties": "tie",
    "clothes": "clothes",
    "glasses": "glasses",
    "scissors": "scissors",
    "pants": "pants",
    "jeans": "jeans",
}
_CLAUSE = re.compile(r"[.,;:!?]+")
_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)?(?:-[a-z]+)*")
_MAX_OBJECT_WORDS = 3


def singular(word: str) -> str:
    """``cups`` -> ``cup``, ``dishes`` -> ``dish``, ``berries`` -> ``berry``, a table for the irregular ones."""
    if word in PLURAL_TABLE:
        return PLURAL_TABLE[word]
    if len(word) > 3 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and re.search(r"(s|x|z|ch|sh)es$", word):
        return word[:-2]
    if len(word) > 2 and word.endswith("s") and not re.search(r"(ss|us|is)$", word):
        return word[:-1]
    return word


def ing_lemma(word: str) -> str:
    """The lemma of an ``-ing`` form by rule 3."""
    if word in IRREGULAR:
        return IRREGULAR[word]
    stem = word[:-3]
    if len(stem) >= 3 and stem[-1] == stem[-2] and stem[-1] in "bdgmnprt":
        return stem[:-1]
    if stem + "e" in E_VERBS:
        return stem + "e"
    return stem


def verb_lemma(word: str, previous: str | None) -> str | None:
    """The verb lemma of ``word`` by rule 2, or None when it is not a verb here."""
    if word in AUXILIARIES or previous in DETERMINERS:
        return None
    if word.endswith("ing") and len(word) >= 5 and word not in ING_NOUNS and word not in VERBS:
        return ing_lemma(word)
    if previous in PARTICLES and previous != "to":  # "a glass of milk": a noun after a preposition
        return None
    if word in VERBS:
        return word
    if word.endswith("ies") and word[:-3] + "y" in VERBS:
        return word[:-3] + "y"
    for cut in (2, 1):
        if word.endswith("es"[-cut:]) and word[:-cut] in VERBS:
            return word[:-cut]
    return None


def clauses(caption: str) -> list[list[str]]:
    """Rule 1: the caption's clauses as lists of lowercase tokens."""
    found: list[list[str]] = []
    for part in _CLAUSE.split(caption.lower().replace("\u2019", "'")):
        current: list[str] = []
        for token in _TOKEN.findall(part):
            if token in CLAUSE_WORDS:
                if current:
                    found.append(current)
                current = []
            else:
                current.append(token)
        if current:
            found.append(current)
    return found


def _object_after(tokens: list[str], start: int) -> tuple[str | None, int]:
    """Rule 5: the object phrase from ``tokens[start:]`` and the index after it."""
    i = start
    while i < len(tokens) and (tokens[i] in PARTICLES or tokens[i] in DETERMINERS):
        i += 1
    words: list[str] = []
    while i < len(tokens) and len(words) < _MAX_OBJECT_WORDS:
        token, previous = tokens[i], tokens[i - 1] if i else None
        if token in PARTICLES or token in DETERMINERS or token in AUXILIARIES:
            break
        if words and verb_lemma(token, previous) is not None:
            break
        words.append(token)
        i += 1
    if not words:
        return None, i
    return " ".join([*words[:-1], singular(words[-1])]), i


def caption_triplets(caption: str) -> list[tuple[str, str | None]]:
    """The ``(interaction, object)`` pairs rules 1-6 read from one caption (object None if intransitive)."""
    triplets: list[tuple[str, str | None]] = []
    for tokens in clauses(caption):
        i = 0
        while i < len(tokens):
            lemma = verb_lemma(tokens[i], tokens[i - 1] if i else None)
            if lemma is None:
                i += 1
                continue
            following = tokens[i + 1] if i + 1 < len(tokens) else None
            if (
                lemma in CATENATIVE
                and following is not None
                and (following == "to" or verb_lemma(following, tokens[i]) is not None)
            ):
                i += 2 if following == "to" else 1
                continue
            obj, i = _object_after(tokens, i + 1)
            if (lemma, obj) not in triplets:
                triplets.append((lemma, obj))
    return triplets


def parse_triplet_text(text: str) -> tuple[str, str | None]:
    """``"*Swing, Baseball Bat."`` -> ``("swing", "baseball bat")`` (the format CL-HOI's teacher prints).

    Leading list marks (``* - •`` and ``1.``), brackets and a final full stop are removed; the part before
    the first comma is the interaction, the rest the object (None when absent).
    """
    cleaned = re.sub(r"^\s*(?:[*\-\u2022]+|\d+[.)])\s*", "", text.strip())
    cleaned = cleaned.strip().strip("<>()[]").rstrip(".").strip()
    interaction, _, obj = cleaned.partition(",")
    interaction = " ".join(interaction.lower().split())
    obj_words = " ".join(obj.lower().strip(" .").split())
    return interaction, obj_words or None


def negative_interactions(
    positives: list[str], dictionary: list[str], count: int = 2, seed: int = 0, video: str = ""
) -> list[str]:
    """``count`` interactions of ``dictionary`` that are not positives, drawn reproducibly per (seed, video).

    CL-HOI's A.2: two negative verbs per image from a verb dictionary. The draw depends only on the seed,
    the video id and the sorted candidates, never on call order.
    """
    candidates = sorted(set(dictionary) - set(positives))
    key = int.from_bytes(hashlib.sha256(f"{seed}:{video}".encode()).digest()[:8], "little")
    rng = np.random.default_rng(key)
    if not candidates:
        return []
    picks = rng.choice(len(candidates), size=min(count, len(candidates)), replace=False)
    return [candidates[int(i)] for i in sorted(picks)]
