"""`tcd eval`, `tcd index`, `tcd search`, `tcd export`: scoring a trained run."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer

from cache import WorkDir
from cli.common import features
from heads.metrics import t2v_metrics, v2t_metrics
from heads.run_dir import RunDir
from heads.scoring import head_device, score_matrix
from pipeline.captions import caption_group
from pipeline.models import load_text
from pipeline.ocr import ocr_group
from pipeline.settings import resolve_settings
from pipeline.video import read_frames, segment_centres
from retrieval.export import export_h5, write_sim_matrix
from retrieval.index import build_index, load_index, save_index, two_stage, video_embeddings
from retrieval.report import Hit, QueryResult, render_report

Work = Annotated[Path, typer.Option("--work", "-w", help="Work directory.")]
Run = Annotated[str, typer.Option(help="Run name under W/runs/.")]
Split = Annotated[str, typer.Option(help="Split to score.")]


def _table(rows: dict[str, dict[str, float]]) -> str:
    cols = ["R@1", "R@5", "R@10", "MdR", "MnR"]
    lines = [f"{'':<5}" + "".join(f"{c:>8}" for c in cols)]
    for name, m in rows.items():
        lines.append(f"{name:<5}" + "".join(f"{m[c]:>8.1f}" for c in cols))
    return "\n".join(lines)


def _window_captions(work: WorkDir, rows: np.ndarray) -> np.ndarray:
    settings = resolve_settings(work.path)
    group = caption_group(work, settings.captions, ocr_group(work, settings.ocr))
    return np.array([[str(c) for c in group.group["captions"][int(r)]] for r in rows], dtype=object)


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_command(
        work: Work,
        run: Run,
        split: Split = "test",
        sim_matrix: Annotated[
            Path | None, typer.Option(help="Write the float32 captions x videos matrix.")
        ] = None,
        order: Annotated[
            str, typer.Option(help="Column order of --sim-matrix: annotation or rand.")
        ] = "annotation",
        rand_file: Annotated[
            Path | None, typer.Option(help="TextVR_test_rand.json, for --order rand.")
        ] = None,
        two_stage_: Annotated[
            bool, typer.Option("--two-stage", help="FAISS top-K, then full rerank.")
        ] = False,
        k: Annotated[int, typer.Option(min=1, help="Candidates per query for --two-stage.")] = 100,
        as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
    ) -> None:
        """Score every (caption, video) pair of a split; print t2v and v2t metrics."""
        store = WorkDir(work)
        data = features(store, split)
        run_dir = RunDir(store.path, run)
        head, _ = run_dir.load_head(data.frames.shape[-1], data.queries.shape[-1])
        started = time.monotonic()
        report: dict = {
            "run": run,
            "split": split,
            "videos": data.n_videos,
            "captions": len(data.queries),
        }
        if two_stage_:
            index_path = run_dir.index_path(split)
            if index_path.exists():  # built by `tcd index` (flat, ivf or hnsw)
                index = load_index(index_path)
            else:
                index = build_index(video_embeddings(head, data), "flat")
            result = two_stage(head, data, index, k)
            sim = result.scores
            report["two_stage"] = {
                "k": min(k, data.n_videos),
                "recall_in_k": result.recall_in_k,
                "stage1_s": result.stage1_s,
                "stage2_s": result.stage2_s,
            }
        else:
            sim = score_matrix(head, data)
        report["seconds"] = time.monotonic() - started
        report["t2v"] = t2v_metrics(sim, data.query_video)
        report["v2t"] = v2t_metrics(sim, data.query_video)
        report["missing_videos"] = data.missing
        metrics_path = run_dir.metrics_path  # one entry per split, latest eval
        saved = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
        saved[split] = report
        metrics_path.write_text(json.dumps(saved, indent=2))
        if sim_matrix is not None:
            write_sim_matrix(sim_matrix, sim, data.video_ids, order, rand_file)
        if as_json:
            typer.echo(json.dumps(report, indent=2))
            return
        typer.echo(f"{run} on {split}: {data.n_videos} videos, {len(data.queries)} captions")
        typer.echo(_table({"t2v": report["t2v"], "v2t": report["v2t"]}))
        if two_stage_:
            ts = report["two_stage"]
            typer.echo(
                f"two-stage K={ts['k']}: true video in K for {ts['recall_in_k']:.1f}% of queries; "
                f"stage 1 {ts['stage1_s']:.3f} s, stage 2 {ts['stage2_s']:.2f} s"
            )
        if data.missing:
            typer.echo(
                f"warning: {len(data.missing)} video(s) without features scored as zeros", err=True
            )
        if sim_matrix is not None:
            typer.echo(f"sim matrix ({order} column order) -> {sim_matrix}")

    @app.command("results")
    def results_command(work: Work, split: Split = "test") -> None:
        """One table of the saved metrics of every evaluated run (from `tcd eval`)."""
        runs = WorkDir(work).path / "runs"
        rows = {}
        for path in sorted(runs.glob("*/metrics.json")):
            saved = json.loads(path.read_text())
            if split in saved:
                rows[path.parent.name] = saved[split]
        if not rows:
            raise typer.BadParameter(f"no run in {runs} was evaluated on {split}; run `tcd eval`")
        cols = ["R@1", "R@5", "R@10", "MdR", "MnR"]
        headers = [f"t2v {cols[0]}", *cols[1:], f"v2t {cols[0]}", *cols[1:]]
        width = max(len(name) for name in [*rows, f"run ({split})"]) + 2
        typer.echo(f"{'run (' + split + ')':<{width}}" + "".join(f"{h:>9}" for h in headers))
        for name, report in rows.items():
            values = [report[d][c] for d in ("t2v", "v2t") for c in cols]
            size = f"  ({report['captions']} captions x {report['videos']} videos)"
            typer.echo(f"{name:<{width}}" + "".join(f"{v:>9.1f}" for v in values) + size)

    @app.command("index")
    def index_command(
        work: Work,
        run: Run,
        split: Split = "test",
        index: Annotated[str, typer.Option(help="flat (exact), ivf or hnsw.")] = "flat",
    ) -> None:
        """Build a FAISS index over the run's query-independent video embeddings."""
        store = WorkDir(work)
        data = features(store, split)
        head, _ = RunDir(store.path, run).load_head(data.frames.shape[-1], data.queries.shape[-1])
        started = time.monotonic()
        built = build_index(video_embeddings(head, data), index)
        path = RunDir(store.path, run).index_path(split)
        save_index(built, path)
        seconds = time.monotonic() - started
        typer.echo(f"{index} index of {built.ntotal} videos in {seconds:.2f} s -> {path}")

    @app.command("search")
    def search_command(
        work: Work,
        run: Run,
        query: Annotated[
            str, typer.Argument(help="Free text, e.g. 'the bakery SUNRISE BREAD on a street'.")
        ],
        split: Split = "test",
        top_k: Annotated[int, typer.Option(min=1, help="Results to show.")] = 10,
        k: Annotated[int, typer.Option(min=1, help="Stage-1 candidates to rerank.")] = 100,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Rank the split's videos for a free-text query (FAISS, then the full head)."""
        store = WorkDir(work)
        data = features(store, split)
        head, _ = RunDir(store.path, run).load_head(data.frames.shape[-1], data.queries.shape[-1])
        settings = resolve_settings(store.path)
        encoder = load_text(settings.encode.text_model)
        query_emb = encoder([query]).astype(np.float16)
        index_path = RunDir(store.path, run).index_path(split)
        index = (
            load_index(index_path)
            if index_path.exists()
            else build_index(video_embeddings(head, data))
        )
        data.queries, data.query_video = query_emb, np.zeros(1, np.int64)
        result = two_stage(head, data, index, k)
        order = [int(v) for v in np.argsort(-result.scores[0]) if np.isfinite(result.scores[0, v])][
            :top_k
        ]
        with torch.no_grad():
            branches = head(
                query=torch.from_numpy(query_emb).float(), **data.video_batch(np.array(order))
            ).branches
        paths = store.manifest.videos.column("path")
        texts = _window_captions(store, data.rows[order])
        caption_sim = np.einsum(
            "ntd,d->nt", data.captions[order].astype(np.float32), query_emb[0].astype(np.float32)
        )
        caption_sim[~data.caption_mask[order]] = -np.inf
        hits = []
        for i, video in enumerate(order):
            best = int(np.argmax(caption_sim[i])) if data.caption_mask[video].any() else None
            hits.append(
                {
                    "rank": i + 1,
                    "video": data.video_ids[video],
                    "path": str(paths[data.rows[video]]),
                    "score": float(result.scores[0, video]),
                    **{f"S_{b}": float(branches[b][0, i]) for b in branches},
                    "caption": texts[i][best] if best is not None else "",
                }
            )
        if as_json:
            typer.echo(json.dumps({"query": query, "results": hits}, indent=2, ensure_ascii=False))
            return
        typer.echo(f"query: {query}")
        for hit in hits:
            branch = "  ".join(f"{k} {v:+.3f}" for k, v in hit.items() if k.startswith("S_"))
            typer.echo(f"{hit['rank']:>3}. {hit['score']:+.3f}  {branch}  {hit['video']}")
            typer.echo(f"      {hit['path']}")
            if hit["caption"]:
                typer.echo(f"      caption: {hit['caption']}")

    @app.command("report")
    def report_command(
        work: Work,
        run: Run,
        out: Annotated[Path, typer.Option(help="HTML file to write.")],
        split: Split = "test",
        queries: Annotated[int, typer.Option(min=1, help="Queries to show.")] = 12,
        top: Annotated[int, typer.Option(min=1, help="Videos per query.")] = 5,
    ) -> None:
        """Write a self-contained HTML page: top videos per query with frames, captions, scores."""
        store = WorkDir(work)
        data = features(store, split)
        run_dir = RunDir(store.path, run)
        head, _ = run_dir.load_head(data.frames.shape[-1], data.queries.shape[-1])
        sim = score_matrix(head, data)
        metrics = {
            "t2v": t2v_metrics(sim, data.query_video),
            "v2t": v2t_metrics(sim, data.query_video),
        }
        videos = store.manifest.videos.read(["path", "duration"])
        captions = _window_captions(store, data.rows)
        thumbs: dict[int, list[np.ndarray]] = {}

        def thumbnails(video: int) -> list[np.ndarray]:
            if video not in thumbs:
                row = int(data.rows[video])
                times = segment_centres(float(videos["duration"][row]), 4)
                try:
                    thumbs[video] = [
                        f for _, b in read_frames(str(videos["path"][row]), times, 4) for f in b
                    ]
                except Exception:  # a broken video shows no frames, the page still renders
                    thumbs[video] = []
            return thumbs[video]

        results = []
        for q in range(min(queries, len(data.queries))):
            order = np.argsort(-sim[q], kind="stable")[:top]
            with torch.no_grad():
                device = head_device(head)
                query = torch.from_numpy(data.queries[q : q + 1]).float().to(device)
                branches = head(query=query, **data.video_batch(order, device)).branches
            hits = [
                Hit(
                    data.video_ids[v],
                    float(sim[q, v]),
                    {b: float(branches[b][0, i]) for b in branches},
                    list(captions[v]),
                    thumbnails(int(v)),
                    bool(v == data.query_video[q]),
                )
                for i, v in enumerate(order)
            ]
            results.append(
                QueryResult(data.query_text[q], data.video_ids[data.query_video[q]], hits)
            )
        title = f"{run} on {split} ({store.path})"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render_report(title, results, metrics, run_dir.curves), encoding="utf-8")
        typer.echo(f"report of {len(results)} queries -> {out}")

    @app.command("export")
    def export_command(
        work: Work,
        out: Annotated[Path, typer.Option(help="Output file.")],
        format_: Annotated[str, typer.Option("--format", help="h5 (HDF5).")] = "h5",
        run: Annotated[
            str | None, typer.Option(help="Also export this run's video embeddings.")
        ] = None,
    ) -> None:
        """Export cached features (and a run's video embeddings) for other tools."""
        if format_ != "h5":
            raise typer.BadParameter("only --format h5 is supported")
        store = WorkDir(work)
        splits = {}
        for split in sorted(store.status()["videos"]["by_split"]):
            splits[split] = features(store, split)
        texts = {s: _window_captions(store, d.rows) for s, d in splits.items()}
        embeddings = None
        if run:
            any_split = next(iter(splits.values()))
            head, _ = RunDir(store.path, run).load_head(
                any_split.frames.shape[-1], any_split.queries.shape[-1]
            )
            embeddings = {s: video_embeddings(head, d) for s, d in splits.items()}
        export_h5(out, splits, texts, embeddings)
        sizes = ", ".join(f"{s} ({d.n_videos} videos)" for s, d in splits.items())
        typer.echo(f"exported {sizes} -> {out}")
