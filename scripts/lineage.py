"""Reading the stack's OpenLineage events back: which task wrote a dataset, and from what.

``python -m scripts.lineage <partition or model path>`` (or the demo's summary) walks back from one
dataset: the task that wrote it, then the task that wrote its model version (or, without one, its
newest input partition that a task wrote), down to the raw partition nothing in the lake wrote.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

MODEL, PARTITION = "MODEL", "PARTITION"


def completed(events_file: Path) -> list[dict]:
    """The COMPLETE events in a file transport's file (one JSON event per line), oldest first;
    a half-written last line (a task still writing) is left out."""
    found = []
    for line in events_file.read_text().splitlines() if events_file.exists() else []:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if event.get("eventType") == "COMPLETE":
            found.append(event)
    return found


def kind(dataset: dict) -> str:
    return ((dataset.get("facets") or {}).get("datasetType") or {}).get("datasetType", "")


def walk_back(events: list[dict], namespace: str, name: str, limit: int = 10) -> list[tuple[dict, dict]]:
    """(event, dataset) pairs from the dataset given back to its first producer: the newest event
    that wrote each dataset, and the input followed next (a model version before partitions)."""
    producer = {(d["namespace"], d["name"]): event for event in events for d in event.get("outputs") or []}
    chain, key = [], (namespace, name)
    while key in producer and len(chain) < limit:
        event = producer[key]
        inputs = event.get("inputs") or []
        made = [d for d in inputs if (d["namespace"], d["name"]) in producer]
        nxt = next((d for d in made if kind(d) == MODEL), None) or (made[-1] if made else None)
        same_tail = [d for d in inputs if d["name"].endswith("/" + "/".join(key[1].split("/")[-2:]))]
        chain.append((event, nxt or (same_tail or inputs or [{}])[-1]))   # raw: the one its output was made from
        if nxt is None:
            break
        key = (nxt["namespace"], nxt["name"])
    return chain


def describe(chain: list[tuple[dict, dict]], root: Path | None = None) -> list[str]:
    """One line per step of a chain: the task, what it wrote, and how many inputs it read."""
    def short(dataset: dict) -> str:
        name = dataset.get("name", "")
        if kind(dataset) == MODEL:
            return f"model {name}"
        return str(Path(name).relative_to(root)) if root and name.startswith(str(root)) else name

    lines = []
    for event, followed in chain:
        outputs = [short(d) for d in event.get("outputs") or []]
        read = event.get("inputs") or []
        lines.append(f"  {event['job']['name']} wrote {', '.join(outputs[:2])}{' ...' if len(outputs) > 2 else ''}"
                     f" from {len(read)} input(s), e.g. {short(followed) if followed else 'none'}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("events", type=Path, help="the events file (.state/lineage/events.jsonl)")
    parser.add_argument("name", help="a dataset's name: a partition's absolute path, or <model>/<version>")
    parser.add_argument("--namespace", default="file", help="its namespace (a model version's: the registry URI)")
    args = parser.parse_args(argv)
    chain = walk_back(completed(args.events), args.namespace, args.name)
    if not chain:
        print(f"no task in {args.events} wrote {args.namespace} {args.name}", file=sys.stderr)
        return 1
    print("\n".join(describe(chain)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
