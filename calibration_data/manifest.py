"""The corpus manifest: what every data file is, and the totals a reader checks first.

`manifest.json` is the one source of truth for which split a document belongs to. Splits are
assigned once, when a document first enters the manifest, and never move afterwards: moving a
document from `train` into `eval` would quietly leak training text into the measurement.

    python -m calibration_data          # add new files, refresh sizes and hashes
    python -m calibration_data --check  # exit 1 if the manifest disagrees with the files
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent / "data"
MANIFEST_PATH = DATA_DIR / "manifest.json"

# Domain directory name -> what it holds. The corpus has every domain in every split.
DOMAINS: dict[str, str] = {
    "news": "news and politics",
    "law": "law and administration",
    "medicine": "medicine and health",
    "science": "science",
    "history": "history",
    "literature": "literature-style prose and dialogue",
    "conversation": "everyday conversation and chat",
    "howto": "instructions and how-tos",
    "technology": "technology and programming",
    "mathematics": "mathematics and word problems",
    "business": "business and finance",
    "sport": "sport",
    "food": "food",
    "travel": "travel and geography",
    "reviews": "consumer reviews",
    "social_media": "social-media style",
}
LANGUAGES = ("pl", "en")

# Target share of each (domain, language) group's documents per corpus split.
CORPUS_SPLITS = ("train", "calib", "eval")
SPLIT_SHARES = {"train": 0.5, "calib": 0.3, "eval": 0.2}

# Record files that are not corpus prose. Each is a split of its own, so none of it can reach
# training, calibration or evaluation by accident (the anonymisation set above all).
RECORD_KINDS = {
    "sft": "instructions",
    "quality": "web",
    "anonymisation": "personal-data",
}


def count_words(text: str) -> int:
    """Words are whitespace-separated runs: the same definition the tokenizer statistics use."""
    return len(text.split())


def record_texts(kind: str, record: dict[str, Any]) -> list[str]:
    """The natural-language content of one JSONL record of the given kind."""
    if kind == "sft":
        return [message["content"] for message in record["messages"]]
    return [record["text"]]


def parse_records(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def read_records(path: Path) -> list[dict[str, Any]]:
    return parse_records(path.read_text("utf-8"))


def describe(path: Path) -> dict[str, Any]:
    """Everything the manifest says about one file except its split."""
    relative = path.relative_to(DATA_DIR)
    data = path.read_bytes()
    text = data.decode("utf-8")
    entry: dict[str, Any] = {"path": relative.as_posix()}
    if relative.parts[0] == "corpus":
        _, domain, language, _ = relative.parts
        entry.update(kind="corpus", language=language, domain=domain, documents=1)
        texts = [text]
    else:
        kind = relative.parts[0]
        records = parse_records(text)  # from the bytes already read for the hash
        languages = Counter(record["language"] for record in records)
        entry.update(
            kind=kind,
            language="+".join(sorted(languages)),
            domain=RECORD_KINDS[kind],
            documents=len(records),
            documents_per_language=dict(sorted(languages.items())),
        )
        texts = [text for record in records for text in record_texts(kind, record)]
    entry.update(
        characters=sum(len(text) for text in texts),
        words=sum(count_words(text) for text in texts),
        bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    return entry


def data_files() -> list[Path]:
    corpus = sorted(DATA_DIR.glob("corpus/*/*/*.txt"))
    records = sorted(path for kind in RECORD_KINDS for path in DATA_DIR.glob(f"{kind}/*.jsonl"))
    return corpus + records


def stable_order(path: str) -> str:
    """A fixed pseudo-random order, so a split never depends on how files happen to be numbered."""
    return hashlib.sha256(path.encode()).hexdigest()


def assign_splits(entries: list[dict[str, Any]], previous: dict[str, str]) -> None:
    """Give every entry a split: kept from `previous`, else the split furthest below its share."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for entry in entries:
        if entry["kind"] != "corpus":
            entry["split"] = entry["kind"]
        elif entry["path"] in previous:
            entry["split"] = previous[entry["path"]]
            groups[entry["domain"], entry["language"]].append(entry)
        else:
            groups[entry["domain"], entry["language"]].append(entry)
    for group in groups.values():
        counts = Counter(entry["split"] for entry in group if "split" in entry)
        for entry in sorted(group, key=lambda entry: stable_order(entry["path"])):
            if "split" in entry:
                continue
            assigned = sum(counts.values()) + 1
            # Largest deficit first; ties go to eval, then calib, so small groups reach every split.
            split = max(
                ("eval", "calib", "train"), key=lambda s: SPLIT_SHARES[s] * assigned - counts[s]
            )
            entry["split"] = split
            counts[split] += 1


def totals(entries: list[dict[str, Any]]) -> dict[str, Any]:
    def add(bucket: dict[str, int], entry: dict[str, Any]) -> None:
        for key in ("documents", "characters", "words", "bytes"):
            bucket[key] = bucket.get(key, 0) + entry[key]

    result: dict[str, Any] = {"all": {}, "by_kind": {}, "corpus_by_split_language": {}}
    for entry in entries:
        add(result["all"], entry)
        add(result["by_kind"].setdefault(entry["kind"], {}), entry)
        if entry["kind"] == "corpus":
            key = f"{entry['split']}/{entry['language']}"
            add(result["corpus_by_split_language"].setdefault(key, {}), entry)
    result["corpus_by_split_language"] = dict(sorted(result["corpus_by_split_language"].items()))
    return result


def read_manifest() -> dict[str, Any]:
    return json.loads(MANIFEST_PATH.read_text("utf-8"))


def build_manifest() -> dict[str, Any]:
    previous: dict[str, str] = {}
    if MANIFEST_PATH.exists():
        previous = {entry["path"]: entry["split"] for entry in read_manifest()["files"]}
    entries = [describe(path) for path in data_files()]
    assign_splits(entries, previous)
    return {
        "name": "pl-en",
        "description": "bielik-quant's own Polish-English corpus: prose for calibration, training "
        "and evaluation, SFT conversations, quality-classifier and anonymisation sets.",
        "domains": DOMAINS,
        "split_shares": SPLIT_SHARES,
        "totals": totals(entries),
        "files": entries,
    }


def check_manifest() -> list[str]:
    """Differences between the manifest on disk and the files; empty when they agree."""
    if not MANIFEST_PATH.exists():
        return [f"{MANIFEST_PATH} does not exist"]
    recorded = read_manifest()
    fresh = build_manifest()
    problems = []
    recorded_files = {entry["path"]: entry for entry in recorded["files"]}
    for entry in fresh["files"]:
        old = recorded_files.pop(entry["path"], None)
        if old is None:
            problems.append(f"{entry['path']}: not in the manifest")
        elif old != entry:
            changed = sorted(key for key in entry if old.get(key) != entry[key])
            problems.append(f"{entry['path']}: manifest differs in {', '.join(changed)}")
    problems += [f"{path}: in the manifest but missing on disk" for path in recorded_files]
    if recorded["totals"] != fresh["totals"]:
        problems.append("corpus totals differ from the files")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="verify instead of writing")
    args = parser.parse_args()
    if args.check:
        problems = check_manifest()
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else 0
    manifest = build_manifest()
    MANIFEST_PATH.write_text(json.dumps(manifest, ensure_ascii=False, indent=1) + "\n", "utf-8")
    print(f"wrote {MANIFEST_PATH} ({len(manifest['files'])} files)")
    return 0
