"""Similarity, metrics, FAISS indexes and exports. Lands with issue 5."""
