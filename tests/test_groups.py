"""Evaluation by query group (heads/groups.py): pair accuracy, per-group metrics, the JSON and
CSV group files and their errors, and `tcd eval --groups` / `tcd ablate --groups` on a tiny
trained work dir."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cache.errors import TcdError
from cli.main import app
from heads.data import Features
from heads.groups import (
    GroupsError,
    flat_group_header,
    flat_group_metrics,
    group_metrics,
    group_report,
    parse_groups,
    read_groups,
    skipped_lines,
)
from heads.metrics import pair_accuracy, t2v_metrics
from retrieval.evaluate import group_table

runner = CliRunner()


def tiny_features(n_videos: int = 4, per_video: int = 2) -> Features:
    """Features with only ids and the query -> video map filled (what grouping reads)."""
    videos = [f"Cooking/v{i}.mp4" for i in range(n_videos)]
    query_video = np.repeat(np.arange(n_videos), per_video)
    query_ids = [f"{videos[v]}#{k % per_video}" for k, v in enumerate(query_video)]
    empty = np.zeros((n_videos, 1, 1), np.float16)
    return Features(
        videos,
        empty,
        empty,
        np.zeros((n_videos, 1), bool),
        empty,
        np.zeros((n_videos, 1), bool),
        np.zeros((len(query_video), 1), np.float16),
        query_video,
        [""] * len(query_video),
        [],
        rows=np.arange(n_videos),
        query_ids=query_ids,
    )


# -- metrics ---------------------------------------------------------------------------------
def test_pair_accuracy_counts_ties_half():
    sim = np.array(
        [
            [0.9, 0.1, 0.5],  # own 0.9 > twin 0.1: a win
            [0.3, 0.3, 0.0],  # own (col 1) 0.3 == twin (col 0) 0.3: half
            [0.2, 0.8, 0.4],  # own (col 2) 0.4 < twin (col 1) 0.8: a loss
            [0.7, 0.7, 0.7],  # a constant row: half
        ]
    )
    own, twin = np.array([0, 1, 2, 0]), np.array([1, 0, 1, 2])
    assert pair_accuracy(sim, own, twin) == pytest.approx(100 * (1 + 0.5 + 0 + 0.5) / 4)
    assert pair_accuracy(np.zeros((5, 3)), np.zeros(5, int), np.ones(5, int)) == 50.0
    assert pair_accuracy(sim[:1], own[:1], twin[:1]) == 100.0


def test_group_metrics_equal_the_overall_metrics_on_the_groups_rows(tmp_path):
    data = tiny_features(n_videos=6, per_video=2)  # 12 queries
    rng = np.random.default_rng(0)
    sim = rng.normal(size=(12, 6)).round(1)  # rounded: ties happen
    path = tmp_path / "g.json"
    path.write_text(
        json.dumps(
            {
                **{str(q): "odd" for q in (1, 3, 5, 7)},
                **{str(q): {"group": "twin-swap", "twin": "Cooking/v5.mp4"} for q in (0, 2, 4)},
                "6": {"group": "twin-swap", "twin": "Sports/elsewhere.mp4"},  # twin not in split
            }
        )
    )
    groups = read_groups(path, data)
    metrics = group_metrics(sim, data.query_video, groups)
    assert list(metrics) == ["odd", "twin-swap"]
    for name, rows in {"odd": [1, 3, 5, 7], "twin-swap": [0, 2, 4, 6]}.items():
        expected = t2v_metrics(sim[rows], data.query_video[rows])
        assert {k: metrics[name][k] for k in expected} == expected
        assert metrics[name]["queries"] == 4
    paired = [0, 2, 4]
    twin = np.full(3, 5)
    assert metrics["twin-swap"]["pairs"] == 3
    assert metrics["twin-swap"]["pair_accuracy"] == pair_accuracy(
        sim[paired], data.query_video[paired], twin
    )
    assert "pair_accuracy" not in metrics["odd"]
    assert groups.twins_not_in_split == 1 and groups.not_in_split == 0
    flat = flat_group_metrics(metrics)
    assert flat["group:twin-swap:pair_accuracy"] == metrics["twin-swap"]["pair_accuracy"]
    assert flat["group:odd:R@1"] == metrics["odd"]["R@1"]
    assert flat_group_header("group:twin-swap:pair_accuracy") == "twin-swap pair acc"
    assert flat_group_header("group:odd:R@1") == "odd R@1"
    assert flat_group_header("R@1") is None


def test_pairs_with_a_video_without_features_are_left_out_of_the_pair_accuracy(tmp_path):
    """A video that failed scores from zero features: its pairs would be won or lost by
    the zeros, not by the model, so they are counted apart."""
    data = tiny_features(n_videos=4, per_video=2)  # queries 0..7, query q of video q // 2
    data.missing = ["Cooking/v3.mp4"]
    sim = np.zeros((8, 4))
    sim[np.arange(8), data.query_video] = 0.5  # each true video above every other one
    sim[:, 3] = 0.9  # the missing video's constant column beats them
    path = tmp_path / "g.json"
    twins = {"0": "Cooking/v1.mp4", "2": "Cooking/v3.mp4", "6": "Cooking/v0.mp4"}
    path.write_text(json.dumps({q: {"group": "twin-swap", "twin": t} for q, t in twins.items()}))
    groups = read_groups(path, data)
    assert groups.pairs_without_features == 2  # query 2's twin and query 6's own video
    metrics = group_metrics(sim, data.query_video, groups)["twin-swap"]
    assert (metrics["pairs"], metrics["pair_accuracy"]) == (1, 100.0)
    assert skipped_lines(0, 0, groups.pairs_without_features) == [
        "2 pairs with a video without features (left out of the pair accuracy)"
    ]
    path.write_text(json.dumps({"2": {"group": "twin-swap", "twin": "Cooking/v3.mp4"}}))
    table = group_table(group_report(sim, data.query_video, read_groups(path, data)))
    assert table.splitlines()[-2:] == [
        "twin-swap pair accuracy: no pair left to score (see below)",  # not "no twin is ..."
        "1 pair with a video without features (left out of the pair accuracy)",
    ]


# -- files -----------------------------------------------------------------------------------
def test_json_csv_and_row_keys_name_the_same_groups(tmp_path):
    data = tiny_features()  # queries 0..7, two per video
    by_id = {
        "Cooking/v0.mp4#0": {"group": "twin-swap", "twin": "Cooking/v3.mp4"},
        "Cooking/v1.mp4#1": "same-text",
        "Cooking/v2.mp4#0": {"group": "same-text"},
        "Cooking/gone.mp4#0": "same-text",  # names no query of the split
        "99": "same-text",  # a row past the split's queries
    }
    by_row = {
        "0": {"group": "twin-swap", "twin": "Cooking/v3.mp4"},
        "3": "same-text",
        "4": "same-text",
        "Cooking/gone.mp4#0": "same-text",
        "99": "same-text",
    }
    (tmp_path / "ids.json").write_text(json.dumps(by_id))
    (tmp_path / "rows.json").write_text(json.dumps(by_row))
    (tmp_path / "ids.csv").write_text(
        "caption,group,twin\n"
        "Cooking/v0.mp4#0,twin-swap,Cooking/v3.mp4\n"
        "Cooking/v1.mp4#1,same-text,\n"
        "\n"
        "4,same-text\n"  # a short row: twin empty
        "Cooking/gone.mp4#0,same-text,\n"
        "99,same-text,\n"
    )
    (tmp_path / "no_twin_column.csv").write_text(
        "group,caption\nsame-text,3\nsame-text,4\nsame-text,99\nsame-text,Cooking/gone.mp4#0\n"
    )
    for name in ("ids.json", "rows.json", "ids.csv"):
        groups = read_groups(tmp_path / name, data)
        assert {k: v.tolist() for k, v in groups.members.items()} == {
            "same-text": [3, 4],
            "twin-swap": [0],
        }, name
        assert groups.twin.tolist() == [3, -1, -1, -1, -1, -1, -1, -1], name
        assert (groups.not_in_split, groups.twins_not_in_split) == (2, 0), name
        assert groups.source == str(tmp_path / name)
    groups = read_groups(tmp_path / "no_twin_column.csv", data)
    assert {k: v.tolist() for k, v in groups.members.items()} == {"same-text": [3, 4]}
    # a file naming no query of the split gives no group at all
    (tmp_path / "none.json").write_text(json.dumps({"Cooking/gone.mp4#0": "x"}))
    assert read_groups(tmp_path / "none.json", data).members == {}
    assert parse_groups("domain").by_domain


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("bad.json", "{not json", "not valid JSON"),
        ("list.json", '["a", "b"]', "must be a JSON object"),
        ("num.json", '{"0": 3}', 'must be a group name or {"group"'),
        ("nogroup.json", '{"0": {"twin": "Cooking/v1.mp4"}}', "group must be a non-empty string"),
        ("intgroup.json", '{"0": {"group": 7}}', "group must be a non-empty string, not 7"),
        ("twinless.json", '{"0": {"group": "twin-swap"}}', "twin-swap entry needs its twin"),
        ("twinless2.json", '{"0": "twin-swap"}', "twin-swap entry needs its twin"),
        ("extra.json", '{"0": {"group": "a", "note": 1}}', "unknown key(s) ['note']"),
        ("dup.json", '{"0": "a", "0": "b"}', "key '0' appears twice"),
        ("nocol.csv", "caption,twin\n0,Cooking/v1.mp4\n", "missing column(s) ['group']"),
        ("empty.csv", "", "missing column(s) ['caption', 'group']"),
        ("twinless.csv", "caption,group,twin\n0,twin-swap,\n", "line 2: a twin-swap entry"),
        ("nogroup.csv", "caption,group,twin\n0,,\n", "line 2: the group must be"),
        ("cells.csv", "caption,group\n0,a,b,c\n", "line 2: 4 cells under 2 columns"),
        ("conflict.csv", "caption,group\n0,a\n0,b\n", "'0' is listed twice"),
    ],
)
def test_malformed_group_files_are_clear_errors(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(GroupsError) as error:
        parse_groups(path)
    assert isinstance(error.value, TcdError)
    assert str(path) in str(error.value) and message in str(error.value)
    assert "\n" not in str(error.value)


def test_entries_that_contradict_each_other_in_the_split_are_refused(tmp_path):
    data = tiny_features()
    path = tmp_path / "g.json"
    path.write_text(json.dumps({"Cooking/v0.mp4#0": "a", "0": "b"}))  # one query, two groups
    with pytest.raises(GroupsError, match="name the same query"):
        read_groups(path, data)
    path.write_text(json.dumps({"0": {"group": "twin-swap", "twin": "Cooking/v0.mp4"}}))
    with pytest.raises(GroupsError, match="is the query's own video"):
        read_groups(path, data)
    with pytest.raises(GroupsError, match="no such groups file"):
        parse_groups(tmp_path / "domains")


# -- the commands ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(synth_set, tmp_path_factory) -> Path:
    """A small work dir with every stage run and run `r` trained (tests/test_retrieval.py)."""
    from tests.test_retrieval import trained_work

    root = tmp_path_factory.mktemp("groups-trained")
    return trained_work(shutil.copytree(synth_set, root / "synth"), root)


@pytest.fixture(scope="module")
def train_split(trained) -> Features:
    from cache import WorkDir
    from cli.common import features

    return features(WorkDir(trained), "train")


def groups_file(data: Features, path: Path) -> Path:
    """Query 0 a twin-swap (twin: the next video), query 1 by row a same-text one, one twin
    and one entry outside the split."""
    own = data.query_video[0]
    path.write_text(
        json.dumps(
            {
                data.query_ids[0]: {"group": "twin-swap", "twin": data.video_ids[own - 1]},
                "1": "same-text",
                data.query_ids[2]: {"group": "twin-swap", "twin": "Sports/not_here.mp4"},
                "Sports/not_here.mp4#0": "same-text",
            }
        )
    )
    return path


def test_eval_groups_prints_saves_and_dumps_per_group_metrics(trained, train_split, tmp_path):
    data = train_split
    path = groups_file(data, tmp_path / "groups.json")
    args = ["eval", "--work", str(trained), "--run", "r", "--split", "train"]
    result = runner.invoke(app, [*args, "--groups", str(path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines.index(f"t2v by group ({path}):") > next(
        i for i, line in enumerate(lines) if line.startswith("v2t ")
    )
    assert any(line.split()[:2] == ["twin-swap", "2"] for line in lines)
    assert any(line.split()[:2] == ["same-text", "1"] for line in lines)
    assert "twin-swap pair accuracy: " in result.output and "of 1 pairs" in result.output
    assert "1 entry not in this split" in result.output
    assert "1 twin is not a video of this split" in result.output

    sim_path = tmp_path / "sim.npy"
    result = runner.invoke(
        app, [*args, "--groups", str(path), "--json", "--sim-matrix", str(sim_path)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    saved = json.loads((trained / "runs" / "r" / "metrics.json").read_text())["train"]
    assert saved["groups"] == report["groups"]
    groups = report["groups"]
    assert groups["source"] == str(path)
    assert (groups["entries_not_in_split"], groups["twins_not_in_split"]) == (1, 1)
    sim = np.load(sim_path)
    twin_swap = groups["by_group"]["twin-swap"]
    assert twin_swap["queries"] == 2 and twin_swap["pairs"] == 1
    own, twin = sim[0, data.query_video[0]], sim[0, data.query_video[0] - 1]
    assert twin_swap["pair_accuracy"] == (100.0 if own > twin else 50.0 if own == twin else 0.0)
    rows = [0, 2]
    expected = t2v_metrics(sim[rows], data.query_video[rows])
    assert {k: twin_swap[k] for k in expected} == pytest.approx(expected)

    result = runner.invoke(app, [*args, "--groups", "domain", "--json"])
    assert result.exit_code == 0, result.output
    by_domain = json.loads(result.stdout)["groups"]["by_group"]
    domains = {v.split("/")[0] for v in data.video_ids}  # synth ids lead with their domain
    assert set(by_domain) == domains
    assert sum(g["queries"] for g in by_domain.values()) == len(data.query_video)


def test_eval_with_a_malformed_groups_file_is_one_error_line_before_scoring(trained, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("caption,group,twin\n0,twin-swap,\n")
    metrics = trained / "runs" / "r" / "metrics.json"
    before = metrics.read_text() if metrics.exists() else None
    args = ["eval", "--work", str(trained), "--run", "r", "--split", "train"]
    result = runner.invoke(app, [*args, "--groups", str(path)])
    assert isinstance(result.exception, GroupsError), result.output
    assert str(path) in str(result.exception) and "\n" not in str(result.exception)
    assert (metrics.read_text() if metrics.exists() else None) == before


def test_ablate_groups_carries_the_group_columns(trained, train_split, tmp_path):
    path = groups_file(train_split, tmp_path / "groups.json")
    grid = tmp_path / "grid.toml"
    grid.write_text('[[variant]]\nname = "vo"\nconfig = "configs/video_only.toml"\n')
    out = tmp_path / "abl.md"
    result = runner.invoke(
        app,
        [
            "ablate",
            "--work",
            str(trained),
            "--grid",
            str(grid),
            "--split",
            "train",
            "--seeds",
            "0,1",
            "--out",
            str(out),
            "--groups",
            str(path),
            "--set",
            "train.epochs=1",
            "--set",
            "train.batch_size=4",
            "--set",
            "train.val_fraction=0.3",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "1 entry not in this split" in result.output
    table = out.read_text()
    header = next(line for line in table.splitlines() if line.startswith("| variant | captions"))
    assert "| same-text R@1 | twin-swap R@1 | twin-swap pair acc | paper TextVR" in header
    row = next(line for line in table.splitlines() if line.startswith("| vo |"))
    assert len(row.split("|")) == len(header.split("|")) and " ± " in row
    results = json.loads(out.with_suffix(".json").read_text())
    for run in results["runs"]:
        assert {"group:same-text:R@1", "group:twin-swap:R@1"} <= set(run)
        assert run["group:twin-swap:pair_accuracy"] in (0.0, 50.0, 100.0)
    summary = results["summary"][0]
    assert "group:twin-swap:pair_accuracy_sd" in summary


def test_an_ablation_says_when_a_variant_s_features_leave_other_pairs_out(tmp_path, monkeypatch):
    """Pairs left out of the pair accuracy were said once, for the first variant's features;
    a caption variant whose features lack other videos scored it over other pairs unsaid."""
    import heads.ablate as ablate
    from heads.groups import QueryGroups

    data = tiny_features()
    pairs_out = {(): 0, ("captions.xi=0.4",): 2}
    monkeypatch.setattr(ablate, "train", lambda config, train_data, run: {"epoch": 0})
    monkeypatch.setattr(ablate, "evaluate", lambda run, eval_data, groups: {"R@1": 0.0})
    monkeypatch.setattr(ablate.RunDir, "epochs", lambda run: [])
    said: list[str] = []
    groups_for = {
        pipeline: QueryGroups("g.json", {}, np.full(8, -1), 0, 0, left_out)
        for pipeline, left_out in pairs_out.items()
    }
    score = ablate._variant_scorer(
        tmp_path, "test", lambda pipeline: (data, data), said.append,
        lambda features: groups_for[current[0]],
    )  # fmt: skip
    current = [()]
    score(ablate.Variant("tcd", "c"), 0, None)
    current[0] = ("captions.xi=0.4",)
    score(ablate.Variant("xi-0.4", "c", pipeline=current[0]), 0, None)
    notes = [line for line in said if line.startswith("groups")]
    assert notes == [
        "groups g.json: xi-0.4's features leave 2 pair(s) out of the pair accuracy "
        "(a video without features)"
    ]
