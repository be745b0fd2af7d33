"""Offline stages: dataset readers, the synthetic generator, video decoding, OCR, captions and
frozen encoders. Each stage is a plain function over the caches in `cache`."""
