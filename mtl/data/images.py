"""Decoding and validating one image file (run in worker processes by the clean stage)."""

from __future__ import annotations

import hashlib
import stat
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["ImageCheck", "inspect_image", "load_image", "resize_image"]


@dataclass(frozen=True)
class ImageCheck:
    """Result of decoding one file: either ``reason`` is set (rejected) or the image facts are."""

    reason: str | None = None
    detail: str = ""
    width: int = 0
    height: int = 0
    source_mode: str = ""
    content_hash: str = ""
    phash: str = ""


def _dct_hash(gray: np.ndarray) -> int:
    """64-bit perceptual hash (pHash): sign of the low 8×8 DCT coefficients vs their median."""
    img = Image.fromarray(gray).resize((32, 32), Image.Resampling.LANCZOS)
    a = np.asarray(img, dtype=np.float64)
    n = 32
    k = np.arange(n)
    basis = np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n))  # [freq, pos]
    dct = basis @ a @ basis.T
    low = dct[:8, :8].ravel()
    bits = low > np.median(low[1:])
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def load_image(path: Path, mode: str) -> np.ndarray:
    """Decode ``path`` to ``[H, W, C]`` uint8 in ``mode`` ('L' -> C=1, 'RGB' -> C=3)."""
    with Image.open(path) as im:
        im.load()
        arr = np.asarray(_convert(im, mode))
    return arr[:, :, None] if arr.ndim == 2 else arr


def _convert(im: Image.Image, mode: str) -> Image.Image:
    if im.mode == mode:
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits instead of clipping.
        a = np.asarray(im, dtype=np.float64)
        hi = a.max() if a.size and a.max() > 0 else 1.0
        im = Image.fromarray((a / hi * 255).round().astype(np.uint8), mode="L")
    elif im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        # Composite transparent pixels onto white rather than the undefined colour beneath.
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, rgba)
    return im.convert(mode)


def inspect_image(path: Path, mode: str, min_size: int, max_pixels: int,
                  reject_modes: tuple[str, ...] = ()) -> ImageCheck:
    """Open, fully decode and fingerprint one image; never raises for a bad file.

    ``reject_modes``: source modes (PIL names) rejected as ``unsupported_mode`` instead of
    being converted to ``mode``.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        return ImageCheck("missing_file", f"no file at {path}")
    except (OSError, ValueError) as exc:
        return ImageCheck("unreadable_file", f"{type(exc).__name__}: {exc}")
    if not stat.S_ISREG(st.st_mode):
        return ImageCheck("not_a_file", f"{path} is a folder or special file, not an image file")
    size = st.st_size
    if size == 0:
        return ImageCheck("empty_file", "the file has 0 bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > max_pixels:
                    return ImageCheck("too_many_pixels",
                                      f"{w}×{h} = {w * h} pixels > clean.max_pixels={max_pixels}")
                if min(w, h) < min_size:
                    return ImageCheck("too_small",
                                      f"{w}×{h} is smaller than clean.min_size={min_size}")
                source_mode = im.mode
                if source_mode in reject_modes:
                    return ImageCheck("unsupported_mode",
                                      f"mode {source_mode} is in clean.reject_modes "
                                      f"{list(reject_modes)}")
                im.load()
                arr = np.asarray(_convert(im, mode))
    except UnidentifiedImageError:
        return ImageCheck("not_an_image", "not a recognised image format")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return ImageCheck("too_many_pixels", str(exc))
    except OSError as exc:
        msg = str(exc)
        reason = "truncated_image" if "truncated" in msg.lower() else "unreadable_image"
        return ImageCheck(reason, f"{type(exc).__name__}: {msg}")
    except (ValueError, SyntaxError, MemoryError, EOFError, struct.error) as exc:
        return ImageCheck("unreadable_image", f"{type(exc).__name__}: {exc}")
    digest = hashlib.sha1(arr.tobytes())
    digest.update(str(arr.shape).encode())
    gray = arr if arr.ndim == 2 else np.asarray(Image.fromarray(arr).convert("L"))
    return ImageCheck(None, "", w, h, source_mode, digest.hexdigest(), f"{_dct_hash(gray):016x}")


def resize_image(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``[H, W, C]`` uint8 -> ``[h, w, C]``: the one resize used for training and prediction."""
    h, w = size
    if img.shape[:2] == (h, w):
        return img
    pil = Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img)
    out = np.asarray(pil.resize((w, h), Image.Resampling.BILINEAR, reducing_gap=2.0))
    return out[:, :, None] if out.ndim == 2 else out
