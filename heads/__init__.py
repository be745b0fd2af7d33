"""Trainable heads (TCD, baselines), losses and the head-only trainer. Lands with issue 4."""
