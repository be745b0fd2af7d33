"""A tiny randomly initialised two-tower CLIP saved as a local directory, for offline tests.

Real CLIP weights and tokenizer files come from the model hub, which tests cannot reach. The
tokenizer here is a committed fixture (`tests/fixtures/clip_tokenizer/`: CLIP's 256 byte-level
symbols, their end-of-word forms, a dozen merges and the two special tokens; any text
tokenizes, without an unknown token), and the model is a seeded `CLIPModel` with small
towers sharing one projection width. The directory it writes loads like a real CLIP
checkpoint through `pipeline.models.load_vision` and `load_text`:

    from tests.clip_fixture import tiny_two_tower_clip
    clip = tiny_two_tower_clip(tmp_path / "clip")  # then encode.vision_model = text_model = clip
"""

from __future__ import annotations

from pathlib import Path

TOKENIZER_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "clip_tokenizer"
PROJECTION_DIM = 32
MAX_TOKENS = 77  # CLIP's context length


def tiny_two_tower_clip(path: Path, seed: int = 0, projection_dim: int = PROJECTION_DIM) -> Path:
    """Write a random tiny `CLIPModel` (fixed `seed`) and its tokenizer to `path`; return it.

    The same `seed` writes the same weights. Both towers project to `projection_dim`.
    """
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizerFast
    from transformers.utils import logging

    logging.disable_progress_bar()  # save_pretrained's shard bar, as pipeline.models does
    tokenizer = CLIPTokenizerFast.from_pretrained(TOKENIZER_FIXTURE, model_max_length=MAX_TOKENS)
    tower = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        projection_dim=projection_dim,
    )
    text = dict(
        tower,
        vocab_size=len(tokenizer),
        max_position_embeddings=MAX_TOKENS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = dict(tower, image_size=32, patch_size=8)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
