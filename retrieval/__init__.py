"""Scoring a trained run: FAISS indexes and two-stage retrieval (`index`), a run's head on a
split and its current index (`run_split`), evaluation (`evaluate`), search hits (`search`),
the HTML report (`report`) and exports (`export`). Never imports `pipeline`: the CLI passes
what needs it (query encoder, window captions, frames) as callables."""
