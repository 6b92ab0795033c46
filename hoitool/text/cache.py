"""The text-embeddings artifact: every caption, interaction, object, pair and class name of a VLM import,
embedded once by one text encoder, fingerprinted, and refused when stale.

Layout (docs/method-cl-hoi.md)::

    OUT.npz   texts (n,) str, kinds (n,) str, embeddings (n, d) float32 unit rows
    OUT.json  format hoitool.text-embeddings/1, fingerprint, inputs (path + sha256 of the import and the
              manifest), encoder identity, template, counts, npz_sha256, hoitool_version

Both are written atomically, the ``.json`` last: an ``.npz`` without its ``.json`` is an unfinished build.
The fingerprint is the sha256 of the inputs' sha256s, the encoder's identity and the template; reading
recomputes it from the files as they are now and raises :class:`StaleArtifactError` on any difference.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hoitool import __version__
from hoitool.errors import StaleArtifactError, UsageError
from hoitool.io.atomic import atomic_path, write_json
from hoitool.io.digest import file_sha256
from hoitool.text.vlm_import import VideoText, fill_triplets, read_vlm_import

FORMAT = "hoitool.text-embeddings/1"
KINDS = ("caption", "interaction", "object", "pair", "class")


def pair_text(interaction: str, obj: str | None) -> str:
    """The text of a triplet as one phrase: ``"pour water"`` (the interaction alone without an object)."""
    return interaction if obj is None else f"{interaction} {obj}"


def class_text(name: str) -> str:
    """A class name as text: ``hold_same_colour`` -> ``hold same colour`` (what a teacher's interaction may say)."""
    return " ".join(name.replace("_", " ").replace("-", " ").split()).lower()


def collect_texts(
    texts: dict[str, VideoText], class_names: Sequence[str] = (), extra_interactions: Sequence[str] = ()
) -> list[tuple[str, str]]:
    """``(kind, text)`` of everything to embed, each once, in a fixed order (kinds in :data:`KINDS` order)."""
    found: dict[str, list[str]] = {kind: [] for kind in KINDS}
    for text in texts.values():
        found["caption"].extend(text.captions)
        for interaction, obj in text.triplets:
            found["interaction"].append(interaction)
            if obj is not None:
                found["object"].append(obj)
            found["pair"].append(pair_text(interaction, obj))
    found["interaction"].extend(extra_interactions)
    found["class"].extend(class_names)
    return [(kind, text) for kind in KINDS for text in dict.fromkeys(found[kind])]


def _sidecar(out: Path) -> Path:
    return out.with_suffix(".json")


def _fingerprint(inputs: dict[str, dict], encoder: dict, template: str) -> str:
    blob = json.dumps(
        {"inputs": {name: entry["sha256"] for name, entry in inputs.items()}, "encoder": encoder, "template": template},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _inputs(import_path: Path, manifest_path: Path | None) -> dict[str, dict]:
    inputs = {"import": {"path": str(import_path), "sha256": file_sha256(import_path)}}
    if manifest_path is not None:
        inputs["manifest"] = {"path": str(manifest_path), "sha256": file_sha256(manifest_path)}
    return inputs


def _read_sidecar(out: Path, format: str = FORMAT) -> dict | None:
    try:
        info = json.loads(_sidecar(out).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and info.get("format") == format else None


def check_ours(out: Path, format: str = FORMAT, what: str = "text embeddings") -> dict | None:
    """The sidecar of an earlier build, None when nothing is there; a foreign file is refused.

    ``format``/``what``: the artifact (text embeddings here, region embeddings in :mod:`hoitool.text.regions`).
    """
    if out.suffix != ".npz":
        raise UsageError(f"{out}: the {what} are written as an .npz file; give a path ending in .npz")
    info = _read_sidecar(out, format)
    if info is None and (out.exists() or _sidecar(out).exists()):
        raise UsageError(
            f"{out}: exists but is not hoitool's {what} (no {_sidecar(out).name} of format "
            f"{format}); refusing to replace it (choose another output)"
        )
    return info


def build_text_embeddings(
    out: Path | str,
    import_path: Path | str,
    encoder,
    class_names: Sequence[str] = (),
    manifest_path: Path | str | None = None,
    template: str = "{}",
    extra_interactions: Sequence[str] = (),
) -> dict:
    """Embed a VLM import's texts (captions without triplets get the rule set's) and the class names.

    ``template`` formats every text before encoding (``"a photo of a person {}"``; ``"{}"`` = as is).
    An up-to-date build of the same fingerprint is kept as it is; an older build of ours is replaced.
    Returns the sidecar's content (with ``"reused": True/False``).
    """
    out, import_path = Path(out), Path(import_path)
    manifest_path = Path(manifest_path) if manifest_path is not None else None
    if "{}" not in template:
        raise UsageError(f"text template {template!r} must contain {{}} where the text goes")
    previous = check_ours(out)
    inputs = _inputs(import_path, manifest_path)
    identity = encoder.identity()
    fingerprint = _fingerprint(inputs, identity, template)
    if (
        previous is not None
        and previous.get("fingerprint") == fingerprint
        and out.is_file()
        and file_sha256(out) == previous.get("npz_sha256")
    ):
        return {**previous, "reused": True}
    texts = fill_triplets(read_vlm_import(import_path))
    entries = collect_texts(texts, list(class_names), list(extra_interactions))
    embeddings = encoder.encode([template.format(text) for _, text in entries])
    embeddings = np.asarray(embeddings, dtype=np.float32).reshape(len(entries), -1)
    with atomic_path(out, suffix=".npz") as tmp, open(tmp, "wb") as handle:
        np.savez(
            handle,
            texts=np.array([t for _, t in entries], dtype=str),
            kinds=np.array([k for k, _ in entries], dtype=str),
            embeddings=embeddings,
        )
    info = {
        "format": FORMAT,
        "fingerprint": fingerprint,
        "inputs": inputs,
        "encoder": identity,
        "template": template,
        "count": len(entries),
        "dim": int(embeddings.shape[1]) if len(entries) else 0,
        "counts": {kind: sum(1 for k, _ in entries if k == kind) for kind in KINDS},
        "npz_sha256": file_sha256(out),
        "hoitool_version": __version__,
    }
    write_json(_sidecar(out), info)
    return {**info, "reused": False}


@dataclass
class TextEmbeddings:
    """Loaded text embeddings: ``lookup(texts)`` -> (n, d) rows; ``kinds[i]`` says what ``texts[i]`` is."""

    texts: list[str]
    kinds: list[str]
    embeddings: np.ndarray
    info: dict

    def __post_init__(self):
        self._index = {(kind, text): i for i, (kind, text) in enumerate(zip(self.kinds, self.texts, strict=False))}

    def lookup(self, texts: list[str], kind: str) -> np.ndarray:
        missing = [text for text in texts if (kind, text) not in self._index]
        if missing:
            raise UsageError(f"text embeddings hold no {kind} {missing[0]!r}; rebuild them from the current import")
        return self.embeddings[[self._index[(kind, text)] for text in texts]].reshape(len(texts), -1)

    def of_kind(self, kind: str) -> tuple[list[str], np.ndarray]:
        rows = [i for i, k in enumerate(self.kinds) if k == kind]
        return [self.texts[i] for i in rows], self.embeddings[rows].reshape(len(rows), -1)


def load_text_embeddings(
    out: Path | str,
    encoder_identity: dict,
    import_path: Path | str | None = None,
    manifest_path: Path | str | None = None,
    force: bool = False,
) -> TextEmbeddings:
    """Read a build, refusing it (StaleArtifactError) when its inputs, encoder or bytes changed; ``force`` reads anyway.

    ``import_path``/``manifest_path`` default to the paths recorded at build time.
    """
    out = Path(out)
    info = _read_sidecar(out)
    if info is None or not out.is_file():
        raise UsageError(f"{out}: no finished text embeddings here (build them first)")
    if not force:
        recorded = info["inputs"]
        import_path = Path(import_path or recorded["import"]["path"])
        manifest = manifest_path or (recorded["manifest"]["path"] if "manifest" in recorded else None)
        for name, path in (("import", import_path), ("manifest", manifest)):
            if path is None:
                continue
            if not Path(path).is_file():
                raise StaleArtifactError(f"{out}: its {name} {path} is gone; rebuild the text embeddings")
            if name not in recorded or file_sha256(path) != recorded[name]["sha256"]:
                raise StaleArtifactError(
                    f"{out}: the {name} {path} changed since the text embeddings were built; "
                    "rebuild them (or force to use them anyway)"
                )
        if encoder_identity != info["encoder"]:
            raise StaleArtifactError(
                f"{out}: built with another text encoder ({info['encoder'].get('kind')}); "
                "rebuild them with this one (or force to use them anyway)"
            )
        if file_sha256(out) != info["npz_sha256"]:
            raise StaleArtifactError(f"{out}: changed since it was written (sha256 differs from {_sidecar(out).name})")
    with np.load(out, allow_pickle=False) as data:
        texts, kinds, embeddings = data["texts"].tolist(), data["kinds"].tolist(), data["embeddings"]
    return TextEmbeddings(texts=texts, kinds=kinds, embeddings=embeddings, info=info)
