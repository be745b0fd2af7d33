"""Evaluation by query group (`tcd eval --groups`, `tcd ablate --groups`): which queries of a
split belong to which named group, and the t2v metrics of each group.

`--groups FILE` reads the groups from a file whose keys name queries: a caption id
(`<video id>#<k>`, `Features.query_ids`) or a caption row (the query's 0-based position in
the split's query order, written as digits):

    JSON  {"Cooking/synth_00003.mp4#0": "same-text",
           "12": {"group": "twin-swap", "twin": "Sports/synth_00007.mp4"}}
    CSV   caption,group,twin        (twin may be empty; the column may be left out)

An entry of the group `twin-swap` must name its twin video (any entry may). Where an entry's
twin is a video of the split, its group also gets the pair accuracy (`heads.metrics`): the
share of its queries whose true video scores above the twin, ties counting half. Entries that
name no query of the split are ignored and counted, and so are twins that are not videos of
the split (left out of the pair accuracy). A pair whose query's video or twin has no features
(a video that failed or was not computed scores from zeros) is left out of the pair accuracy
and counted too. Queries without an entry are in no group; a group with no query in the split
is left out.

`--groups domain` groups the queries by the `domain` column of their video in the manifest
(the dataset reader's: the TextVR category folder, e.g. `Cooking`); a video without a domain
puts its queries in no group. The manifest is the one owner of a video's domain: the leading
folder of a video id is not read here.

    spec = parse_groups(path_or_domain)           # a malformed file fails here, before work
    groups = spec.resolve(features, manifest)     # -> QueryGroups of this split's queries
    report = group_report(sim, features.query_video, groups)
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cache.errors import TcdError
from heads.metrics import pair_accuracy, t2v_metrics

if TYPE_CHECKING:  # (no torch for reading a file)
    from cache import Manifest
    from heads.data import Features

DOMAIN = "domain"  # `--groups domain`: the manifest's domain of each query's video
TWIN_SWAP = "twin-swap"  # the group whose entries must name a twin video
CSV_COLUMNS = ("caption", "group", "twin")
FLAT_PREFIX = "group:"  # keys of `flat_group_metrics` (ablation table columns)
FLAT_HEADERS = {"R@1": "R@1", "pair_accuracy": "pair acc"}


class GroupsError(TcdError):
    """A groups file cannot be read, does not follow its format, or contradicts itself."""


@dataclass(frozen=True)
class GroupEntry:
    key: str  # caption id, or caption row as digits
    group: str
    twin: str | None = None  # video id of the twin


@dataclass
class QueryGroups:
    """The groups of one split's queries."""

    source: str  # the file, or `domain`
    members: dict[str, np.ndarray]  # group -> its query indices (ascending); groups by name
    twin: np.ndarray  # (M,) index of each query's twin video in the split, -1 for none
    not_in_split: int = 0  # entries naming no query of the split
    twins_not_in_split: int = 0  # twins that are not videos of the split
    pairs_without_features: int = 0  # pairs left out: the query's video or twin has no features


@dataclass(frozen=True)
class GroupSpec:
    """What `--groups` names: a file's entries, or the manifest's domains (`entries` None)."""

    source: str
    entries: tuple[GroupEntry, ...] | None = None

    @property
    def by_domain(self) -> bool:
        return self.entries is None

    def resolve(self, features: Features, manifest: Manifest | None = None) -> QueryGroups:
        """The groups of `features`' queries (`manifest` is read only by `domain`)."""
        if self.entries is None:
            return _domain_groups(features, manifest)
        if features.query_ids is None:
            raise GroupsError(f"{self.source}: the split's features carry no caption ids")
        n_queries = len(features.query_video)
        by_id = {q: i for i, q in enumerate(features.query_ids)}
        videos = {v: i for i, v in enumerate(features.video_ids)}
        chosen: dict[int, GroupEntry] = {}
        not_in_split = 0
        for entry in self.entries:
            query = _query_index(entry.key, by_id, n_queries)
            if query is None:
                not_in_split += 1
                continue
            seen = chosen.setdefault(query, entry)
            if (seen.group, seen.twin) != (entry.group, entry.twin):
                raise GroupsError(
                    f"{self.source}: entries {seen.key!r} and {entry.key!r} name the same query "
                    f"(row {query}) with different groups or twins"
                )
        no_features = {videos[v] for v in features.missing if v in videos}
        twin = np.full(n_queries, -1, dtype=np.int64)
        twins_not_in_split = pairs_without_features = 0
        members: dict[str, list[int]] = {}
        for query, entry in sorted(chosen.items()):
            members.setdefault(entry.group, []).append(query)
            if entry.twin is None:
                continue
            if entry.twin not in videos:
                twins_not_in_split += 1
            elif videos[entry.twin] == features.query_video[query]:
                raise GroupsError(
                    f"{self.source}: entry {entry.key!r}: its twin {entry.twin!r} is the "
                    "query's own video"
                )
            elif {videos[entry.twin], features.query_video[query]} & no_features:
                pairs_without_features += 1
            else:
                twin[query] = videos[entry.twin]
        return QueryGroups(
            self.source,
            {name: np.array(members[name], dtype=np.int64) for name in sorted(members)},
            twin,
            not_in_split,
            twins_not_in_split,
            pairs_without_features,
        )


def parse_groups(source: str | Path) -> GroupSpec:
    """Read `--groups`: `domain`, or a JSON or CSV file (by its suffix; otherwise a file
    starting with `{` is JSON). Raises `GroupsError` naming the file and the problem."""
    if str(source) == DOMAIN:
        return GroupSpec(DOMAIN)
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GroupsError(
            f"{path}: no such groups file (give a JSON or CSV file, or `{DOMAIN}`)"
        ) from None
    except UnicodeDecodeError:
        raise GroupsError(f"{path}: not a UTF-8 text file") from None
    except OSError as exc:
        raise GroupsError(f"{path}: cannot read the groups file ({exc.strerror or exc})") from None
    suffix = path.suffix.lower()
    is_json = suffix == ".json" or (suffix != ".csv" and text.lstrip().startswith("{"))
    entries = _json_entries(path, text) if is_json else _csv_entries(path, text)
    unique: dict[str, GroupEntry] = {}
    for entry in entries:
        seen = unique.setdefault(entry.key, entry)
        if seen != entry:
            raise GroupsError(f"{path}: {entry.key!r} is listed twice with different groups")
    return GroupSpec(str(path), tuple(unique.values()))


def read_groups(
    source: str | Path, features: Features, manifest: Manifest | None = None
) -> QueryGroups:
    """`parse_groups(source).resolve(features, manifest)`."""
    return parse_groups(source).resolve(features, manifest)


def group_metrics(
    sim: np.ndarray, query_video: np.ndarray, groups: QueryGroups
) -> dict[str, dict[str, float]]:
    """Per group: its query count, the t2v metrics of its rows of `sim` (each query still ranks
    every video of the split), and, where its entries have twins in the split, the number of
    pairs and the pair accuracy (percent)."""
    sim, query_video = np.asarray(sim), np.asarray(query_video)
    out: dict[str, dict[str, float]] = {}
    for name, rows in groups.members.items():
        values: dict[str, float] = {
            "queries": len(rows),
            **t2v_metrics(sim[rows], query_video[rows]),
        }
        paired = rows[groups.twin[rows] >= 0]
        if len(paired):
            values["pairs"] = len(paired)
            values["pair_accuracy"] = pair_accuracy(
                sim[paired], query_video[paired], groups.twin[paired]
            )
        out[name] = values
    return out


def group_report(sim: np.ndarray, query_video: np.ndarray, groups: QueryGroups) -> dict[str, Any]:
    """What `tcd eval` saves under `groups` in metrics.json."""
    return {
        "source": groups.source,
        "entries_not_in_split": groups.not_in_split,
        "twins_not_in_split": groups.twins_not_in_split,
        "pairs_without_features": groups.pairs_without_features,
        "by_group": group_metrics(sim, query_video, groups),
    }


def skipped_lines(
    entries_not_in_split: int, twins_not_in_split: int, pairs_without_features: int = 0
) -> list[str]:
    """What was ignored, in words (empty when nothing was)."""
    lines = []
    if entries_not_in_split:
        entries = "entry" if entries_not_in_split == 1 else "entries"
        lines.append(f"{entries_not_in_split} {entries} not in this split (ignored)")
    if twins_not_in_split:
        twins = "twin is not a video" if twins_not_in_split == 1 else "twins are not videos"
        lines.append(f"{twins_not_in_split} {twins} of this split (left out of the pair accuracy)")
    if pairs_without_features:
        pairs = "pair" if pairs_without_features == 1 else "pairs"
        lines.append(
            f"{pairs_without_features} {pairs} with a video without features "
            "(left out of the pair accuracy)"
        )
    return lines


def flat_group_metrics(by_group: dict[str, dict[str, float]]) -> dict[str, float]:
    """Each group's R@1 and pair accuracy as flat `group:<name>:<metric>` values (the
    ablation study's columns)."""
    return {
        f"{FLAT_PREFIX}{name}:{metric}": values[metric]
        for name, values in by_group.items()
        for metric in FLAT_HEADERS
        if metric in values
    }


def flat_group_header(key: str) -> str | None:
    """The column header of a `flat_group_metrics` key ('twin-swap pair acc'); None for
    any other key."""
    if not key.startswith(FLAT_PREFIX):
        return None
    name, _, metric = key[len(FLAT_PREFIX) :].rpartition(":")
    return f"{name} {FLAT_HEADERS[metric]}" if metric in FLAT_HEADERS else None


# -- reading ----------------------------------------------------------------------------------
def _query_index(key: str, by_id: dict[str, int], n_queries: int) -> int | None:
    if key.isascii() and key.isdigit():
        row = int(key)
        return row if row < n_queries else None
    return by_id.get(key)


def _entry(where: str, key: str, group: Any, twin: Any) -> GroupEntry:
    if not isinstance(group, str) or not group.strip():
        raise GroupsError(f"{where}: the group must be a non-empty string, not {group!r}")
    if twin is not None and not isinstance(twin, str):
        raise GroupsError(f"{where}: the twin must be a video id string, not {twin!r}")
    if group == TWIN_SWAP and not twin:
        raise GroupsError(f"{where}: a {TWIN_SWAP} entry needs its twin's video id")
    return GroupEntry(key, group, twin or None)


def _unique_keys(path: Path):
    def pairs_to_dict(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise GroupsError(f"{path}: key {key!r} appears twice")
            out[key] = value
        return out

    return pairs_to_dict


def _json_entries(path: Path, text: str) -> list[GroupEntry]:
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys(path))
    except json.JSONDecodeError as exc:
        raise GroupsError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise GroupsError(
            f"{path}: must be a JSON object mapping caption id or row to a group, "
            f"not {type(data).__name__}"
        )
    entries = []
    for key, value in data.items():
        where = f"{path}: entry {key!r}"
        if isinstance(value, dict):
            extra = sorted(set(value) - {"group", "twin"})
            if extra:
                raise GroupsError(f"{where}: unknown key(s) {extra} (allowed: group, twin)")
            entries.append(_entry(where, key, value.get("group"), value.get("twin")))
        elif isinstance(value, str):
            entries.append(_entry(where, key, value, None))
        else:
            raise GroupsError(
                f'{where}: must be a group name or {{"group": ..., "twin": ...}}, not {value!r}'
            )
    return entries


def _csv_entries(path: Path, text: str) -> list[GroupEntry]:
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:
        raise GroupsError(f"{path}: not valid CSV ({exc})") from None
    header = [cell.strip() for cell in rows[0]] if rows else []
    missing = [c for c in CSV_COLUMNS[:2] if c not in header]
    if missing:
        raise GroupsError(
            f"{path}: the CSV header must be {','.join(CSV_COLUMNS)} (twin optional); "
            f"missing column(s) {missing}, got {header}"
        )
    at = {name: header.index(name) for name in CSV_COLUMNS if name in header}
    entries = []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue  # a blank line
        if len(row) > len(header):
            raise GroupsError(f"{path} line {line}: {len(row)} cells under {len(header)} columns")
        cells = {name: row[i].strip() if i < len(row) else "" for name, i in at.items()}
        where = f"{path} line {line}"
        if not cells["caption"]:
            raise GroupsError(f"{where}: no caption id or row")
        entries.append(_entry(where, cells["caption"], cells["group"], cells.get("twin") or None))
    return entries


def _domain_groups(features: Features, manifest: Manifest | None) -> QueryGroups:
    if manifest is None or features.rows is None:
        raise GroupsError(f"--groups {DOMAIN} needs the manifest rows of the split's videos")
    domains = manifest.videos.column("domain")[np.asarray(features.rows)]
    members: dict[str, list[int]] = {}
    for query, video in enumerate(np.asarray(features.query_video)):
        domain = str(domains[video])
        if domain:
            members.setdefault(domain, []).append(query)
    return QueryGroups(
        DOMAIN,
        {name: np.array(members[name], dtype=np.int64) for name in sorted(members)},
        np.full(len(features.query_video), -1, dtype=np.int64),
    )
