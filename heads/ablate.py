"""Ablation grids: a TOML list of variants (a config file plus overrides), trained over the
same cached features and scored on one evaluation split. No feature is recomputed."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cache.errors import SettingsError
from cache.settings import load_settings, read_toml


@dataclass(frozen=True)
class Variant:
    name: str
    config: str
    set: list[str] = field(default_factory=list)


def read_grid(path: Path) -> list[Variant]:
    data = read_toml(path, "ablation grid")
    variants = []
    for i, item in enumerate(data.get("variant", [])):
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("name"), str)
            or not isinstance(item.get("config"), str)
        ):
            raise SettingsError(f"{path}: variant {i} needs a string 'name' and 'config'")
        extra = set(item) - {"name", "config", "set"}
        if extra:
            raise SettingsError(
                f"{path}: variant {item['name']!r} has unknown key(s) {sorted(extra)}"
            )
        variants.append(Variant(item["name"], item["config"], list(item.get("set", []))))
    if not variants:
        raise SettingsError(f"{path}: no [[variant]] entries")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise SettingsError(f"{path}: variant names must be unique")
    return variants


def run_grid(
    variants: list[Variant],
    base: Path,
    config_cls: type,
    train_and_score: Callable[[str, Any], dict[str, Any]],
) -> list[dict[str, Any]]:
    """Train and score every variant; config paths are relative to `base` when not absolute."""
    rows = []
    for variant in variants:
        config_path = Path(variant.config)
        if not config_path.is_absolute():
            config_path = base / config_path
        config = load_settings(config_cls, config_path, variant.set)
        started = time.monotonic()
        result = train_and_score(variant.name, config)
        rows.append({"variant": variant.name, **result, "train_s": time.monotonic() - started})
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    columns = ["variant", "R@1", "R@5", "R@10", "MdR", "MnR", "params", "train_s"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for column in columns:
            value = row.get(column, "")
            if isinstance(value, float):
                cells.append(f"{value:.1f}")
            elif isinstance(value, int) and column == "params":
                cells.append(f"{value:,}")
            else:
                cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
