"""Trainable heads (TCD, baselines), their losses, checkpoints, scoring and metrics, the
head-only trainer, the run directory and the ablation runner. Never imports `pipeline`."""
