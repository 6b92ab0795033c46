"""hoitool.text: the VLM JSON-lines import, the caption -> triplet rules, text encoders, the embeddings artifact."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from hoitool.errors import StaleArtifactError, UsageError
from hoitool.text.cache import (
    build_text_embeddings,
    collect_texts,
    load_text_embeddings,
    pair_text,
)
from hoitool.text.encoders import EmbeddingsFile, TinyTextEncoder, load_text_encoder
from hoitool.text.triplets import (
    caption_triplets,
    ing_lemma,
    negative_interactions,
    parse_triplet_text,
    singular,
)
from hoitool.text.vlm_import import (
    captions_to_triplets,
    fill_triplets,
    match_videos,
    read_vlm_import,
)

# -- rules ----------------------------------------------------------------------------------------

CAPTIONS = [
    # the paper's own example (CL-HOI A.6) and its teacher's output (A.1)
    ("The persons in the first example are flying kites in a grassy field.", [("fly", "kite")]),
    ("A man is swinging a baseball bat and catching a baseball.", [("swing", "baseball bat"), ("catch", "baseball")]),
    ("A woman sitting on a chair reads a book", [("sit", "chair"), ("read", "book")]),
    ("Someone is trying to open a door", [("open", "door")]),  # catenative verb skipped
    ("A person is walking.", [("walk", None)]),  # intransitive
    ("Putting something onto something", [("put", "something")]),  # a Something-Something template
    ("A man holding a glass of milk", [("hold", "glass")]),  # "milk" after "of" is a noun
    ("The man picks up two cups and washes the dishes.", [("pick", "cup"), ("wash", "dish")]),
    ("A chef is making a cake; she is running", [("make", "cake"), ("run", None)]),
    ("A girl keeps pouring water into a bowl", [("pour", "water")]),
    ("A painting of a boat", []),  # "painting" after a determiner is a noun: no verb at all
    ("", []),
]


@pytest.mark.parametrize("caption, expected", CAPTIONS)
def test_caption_triplets(caption, expected):
    assert caption_triplets(caption) == expected


def test_lemma_and_plural_rules():
    assert [ing_lemma(w) for w in ("running", "calling", "making", "lying", "adding", "pouring", "cutting")] == [
        "run",
        "call",
        "make",
        "lie",
        "add",
        "pour",
        "cut",
    ]
    assert [singular(w) for w in ("cups", "dishes", "berries", "glass", "people", "knives", "tennis", "boxes")] == [
        "cup",
        "dish",
        "berry",
        "glass",
        "person",
        "knife",
        "tennis",
        "box",
    ]


def test_parse_triplet_text_the_teachers_format():
    assert parse_triplet_text("*Swing, Baseball Bat.") == ("swing", "baseball bat")
    assert parse_triplet_text("*Catch, Baseball.") == ("catch", "baseball")
    assert parse_triplet_text("2. <ride, horse>") == ("ride", "horse")
    assert parse_triplet_text("- walk") == ("walk", None)


def test_negative_interactions_are_reproducible_and_exclude_positives():
    dictionary = ["eat", "kick", "open", "pour", "ride", "wash"]
    first = negative_interactions(["pour", "open"], dictionary, count=2, seed=3, video="v1")
    assert len(first) == 2 and not {"pour", "open"} & set(first) and set(first) <= set(dictionary)
    assert negative_interactions(["open", "pour"], list(reversed(dictionary)), count=2, seed=3, video="v1") == first
    assert negative_interactions(["pour"], ["pour", "eat"], count=2, video="v") == ["eat"]
    draws = {tuple(negative_interactions([], dictionary, 2, seed=0, video=f"v{i}")) for i in range(20)}
    assert len(draws) > 3  # depends on the video


# -- the import -----------------------------------------------------------------------------------


def _write(path, lines):
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_read_import_all_triplet_forms(tmp_path):
    path = _write(
        tmp_path / "vlm.jsonl",
        [
            {
                "video": "a",
                "captions": ["A Person  pours water."],
                "triplets": [
                    ["Pour", "Water"],
                    {"interaction": "hold", "object": "cup"},
                    "*Pour, Water.",
                    ["walk", None],
                ],
            },
            "",
            {"video": "b", "caption": "A man is opening a door.", "source": "InstructBLIP"},
        ],
    )
    texts = read_vlm_import(path)
    assert list(texts) == ["a", "b"]
    assert texts["a"].captions == ["A Person pours water."]
    assert texts["a"].triplets == [("pour", "water"), ("hold", "cup"), ("walk", None)]  # duplicates kept once
    assert texts["a"].interactions() == ["pour", "hold", "walk"]
    assert texts["b"].triplets == [] and texts["b"].source == "InstructBLIP"
    filled = fill_triplets(texts)
    assert filled["b"].triplets == [("open", "door")] and filled["b"].triplets_from == "rules"
    assert filled["a"].triplets_from == "import"


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", r"vlm.jsonl:1: not valid JSON"),
        ('["a"]', "expected a JSON object"),
        ('{"captions": ["x"]}', 'missing "video"'),
        ('{"video": "a"}', "neither captions nor triplets"),
        ('{"video": "a", "caption": "x", "captions": ["y"]}', "not both"),
        ('{"video": "a", "captions": "x"}', "list of strings"),
        ('{"video": "a", "triplets": [[1, 2]]}', "bad triplet"),
        ('{"video": "a", "triplets": [["", "cup"]]}', "no interaction"),
        ('{"video": "a", "caption": "x", "label": 3}', "unknown key 'label'"),
    ],
)
def test_bad_import_lines_are_one_line_errors(tmp_path, line, message):
    path = _write(tmp_path / "vlm.jsonl", [line])
    with pytest.raises(UsageError, match=message):
        read_vlm_import(path)


def test_duplicate_videos_unknown_ids_and_missing_file(tmp_path):
    path = _write(tmp_path / "vlm.jsonl", [{"video": "a", "caption": "x"}, {"video": "a", "caption": "y"}])
    with pytest.raises(UsageError, match=r":2: video 'a' again \(first on line 1\)"):
        read_vlm_import(path)
    with pytest.raises(UsageError, match="not found"):
        read_vlm_import(tmp_path / "missing.jsonl")
    texts = read_vlm_import(_write(tmp_path / "ok.jsonl", [{"video": "a", "caption": "x"}]))
    assert match_videos(texts, ["a", "b"]) == ["b"]
    with pytest.raises(UsageError, match="'a' is not in the manifest"):
        match_videos(texts, ["b"])


def test_captions_to_triplets_file(tmp_path):
    source = _write(
        tmp_path / "in.jsonl",
        [
            {"video": "a", "caption": "A boy is kicking a ball."},
            {"video": "b", "caption": "A quiet room."},
            {"video": "c", "triplets": [["eat", "apple"]]},
        ],
    )
    counts = captions_to_triplets(source, tmp_path / "out.jsonl")
    assert counts == {"videos": 3, "filled": 1, "without": 1}
    again = read_vlm_import(tmp_path / "out.jsonl")
    assert again["a"].triplets == [("kick", "ball")] and again["c"].triplets == [("eat", "apple")]
    with pytest.raises(UsageError, match="exists"):
        captions_to_triplets(source, tmp_path / "out.jsonl")
    with pytest.raises(UsageError, match="input file"):
        captions_to_triplets(source, source)


# -- encoders -------------------------------------------------------------------------------------


def test_tiny_encoder_is_deterministic_unit_and_word_based():
    encoder = TinyTextEncoder(dim=16, seed=1)
    rows = encoder.encode(["pour water", "Pour  Water", "kick ball", ""])
    assert rows.shape == (4, 16) and rows.dtype == np.float32
    assert np.allclose(np.linalg.norm(rows[:3], axis=1), 1.0) and not rows[3].any()
    assert np.allclose(rows[0], rows[1])
    assert np.allclose(TinyTextEncoder(dim=16, seed=1).encode(["kick ball"]), rows[2])
    assert not np.allclose(TinyTextEncoder(dim=16, seed=2).encode(["kick ball"]), rows[2])


def test_embeddings_file_encoder(tmp_path):
    path = tmp_path / "emb.npz"
    np.savez(path, texts=np.array(["pour", "kick"]), embeddings=np.array([[3.0, 4.0], [0.0, 2.0]]))
    encoder = load_text_encoder(f"file:{path}")
    assert isinstance(encoder, EmbeddingsFile)
    assert np.allclose(encoder.encode(["kick", "pour"]), [[0.0, 1.0], [0.6, 0.8]])
    with pytest.raises(UsageError, match="no embedding for the text 'eat'"):
        encoder.encode(["eat"])


def test_encoder_specs_fail_in_one_line(tmp_path):
    for spec, message in (
        ("bert", "unknown text encoder"),
        ("tiny:x", "integer"),
        ("hf:", "missing path"),
        (f"hf:{tmp_path / 'nope'}", "does not exist"),
        ("open_clip::x", "open_clip:MODEL:WEIGHTS"),
    ):
        with pytest.raises(UsageError, match=message):
            load_text_encoder(spec)
    assert load_text_encoder("tiny:8").dim == 8


def test_missing_open_clip_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # as if not installed (it is, in the clip extra)
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"x")
    with pytest.raises(UsageError, match="pip install open_clip_torch"):
        load_text_encoder(f"open_clip:ViT-B-32:{weights}")


# -- the artifact ---------------------------------------------------------------------------------


@pytest.fixture
def vlm(tmp_path):
    return _write(
        tmp_path / "vlm.jsonl",
        [
            {"video": "a", "captions": ["A person is pouring water into a cup."]},
            {"video": "b", "triplets": [["kick", "ball"], ["run", None]]},
        ],
    )


def test_collect_texts_kinds_and_order(vlm):
    texts = fill_triplets(read_vlm_import(vlm))
    entries = collect_texts(texts, ["pouring", "kicking"], extra_interactions=["eat", "pour"])
    assert entries == [
        ("caption", "A person is pouring water into a cup."),
        ("interaction", "pour"),
        ("interaction", "kick"),
        ("interaction", "run"),
        ("interaction", "eat"),
        ("object", "water"),
        ("object", "ball"),
        ("pair", "pour water"),
        ("pair", "kick ball"),
        ("pair", "run"),
        ("class", "pouring"),
        ("class", "kicking"),
    ]
    assert pair_text("run", None) == "run"


def test_build_reuse_and_lookup(tmp_path, vlm):
    encoder = TinyTextEncoder(dim=8)
    out = tmp_path / "text.npz"
    info = build_text_embeddings(out, vlm, encoder, class_names=["pouring"])
    assert not info["reused"] and info["counts"]["class"] == 1 and info["dim"] == 8
    assert build_text_embeddings(out, vlm, encoder, class_names=["pouring"])["reused"]
    loaded = load_text_embeddings(out, encoder.identity())
    assert np.allclose(loaded.lookup(["pour water"], "pair"), encoder.encode(["pour water"]))
    names, rows = loaded.of_kind("interaction")
    assert names == ["pour", "kick", "run"] and rows.shape == (3, 8)
    with pytest.raises(UsageError, match="no object 'horse'"):
        loaded.lookup(["horse"], "object")


def test_template_is_applied(tmp_path, vlm):
    encoder = TinyTextEncoder(dim=8)
    build_text_embeddings(tmp_path / "t.npz", vlm, encoder, template="a person {}")
    loaded = load_text_embeddings(tmp_path / "t.npz", encoder.identity())
    assert np.allclose(loaded.lookup(["kick"], "interaction"), encoder.encode(["a person kick"]))
    with pytest.raises(UsageError, match="must contain"):
        build_text_embeddings(tmp_path / "u.npz", vlm, encoder, template="a person")


def test_stale_embeddings_are_refused(tmp_path, vlm):
    encoder = TinyTextEncoder(dim=8)
    manifest = tmp_path / "manifest.json"
    manifest.write_text("{}")
    out = tmp_path / "text.npz"
    build_text_embeddings(out, vlm, encoder, manifest_path=manifest)
    with pytest.raises(StaleArtifactError, match="another text encoder"):
        load_text_embeddings(out, TinyTextEncoder(dim=8, seed=5).identity())
    manifest.write_text('{"changed": 1}')
    with pytest.raises(StaleArtifactError, match="manifest .* changed"):
        load_text_embeddings(out, encoder.identity())
    load_text_embeddings(out, encoder.identity(), force=True)  # force reads anyway
    assert not build_text_embeddings(out, vlm, encoder, manifest_path=manifest)["reused"]  # rebuilt
    load_text_embeddings(out, encoder.identity())
    with open(vlm, "a") as handle:
        handle.write(json.dumps({"video": "c", "caption": "A dog."}) + "\n")
    with pytest.raises(StaleArtifactError, match="import .* changed"):
        load_text_embeddings(out, encoder.identity())
    build_text_embeddings(out, vlm, encoder, manifest_path=manifest)
    with np.load(out) as data:  # someone rewrites the arrays behind hoitool's back
        np.savez(out, texts=data["texts"], kinds=data["kinds"], embeddings=data["embeddings"] * 2)
    with pytest.raises(StaleArtifactError, match="sha256"):
        load_text_embeddings(out, encoder.identity())


def test_foreign_files_are_never_replaced(tmp_path, vlm):
    foreign = tmp_path / "mine.npz"
    foreign.write_bytes(b"user data")
    with pytest.raises(UsageError, match="not hoitool's text embeddings"):
        build_text_embeddings(foreign, vlm, TinyTextEncoder())
    assert foreign.read_bytes() == b"user data"
    with pytest.raises(UsageError, match=r"\.npz"):
        build_text_embeddings(tmp_path / "x.h5", vlm, TinyTextEncoder())
    with pytest.raises(UsageError, match="no finished text embeddings"):
        load_text_embeddings(tmp_path / "none.npz", TinyTextEncoder().identity())
