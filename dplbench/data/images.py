"""Checking and (optionally) shrinking source images at conversion time."""

from __future__ import annotations

import io

from PIL import Image

# Extensions as CLIP_benchmark writes them: "jpeg" becomes "jpg".
_EXT_ALIASES = {"jpeg": "jpg", "tiff": "tif"}
_FORMAT_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp"}


def sample_ext(filename: str, pil_format: str | None) -> str:
    """Extension for the image in the shard: the source file's, lower-cased."""
    _, dot, ext = filename.rpartition(".")
    ext = ext.lower() if dot else ""
    if not ext or "/" in ext:
        ext = _FORMAT_EXT.get(pil_format or "", "jpg")
    return _EXT_ALIASES.get(ext, ext)


def check_and_encode(data: bytes, filename: str, max_side: int | None) -> tuple[bytes, str]:
    """Decode `data` fully (raises on a truncated or corrupt image) and return the bytes to
    store with their extension: the original bytes, or a re-encoding whose shorter side is
    `max_side` when the image is larger than that."""
    with Image.open(io.BytesIO(data)) as img:
        fmt = img.format
        w, h = img.size
        shrink = max_side is not None and min(w, h) > max_side
        if shrink:
            scale = max_side / min(w, h)
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
        else:
            size = (max(1, w // 8), max(1, h // 8))
        # draft(): JPEG decodes at a reduced DCT scale (>= size); the whole entropy-coded
        # stream is still parsed, so corruption is caught at a fraction of the cost.
        img.draft("RGB", size)
        img.load()
        if not shrink:
            return data, sample_ext(filename, fmt)
        img = img.convert("RGB").resize(size, Image.Resampling.BICUBIC)
        out = io.BytesIO()
        if fmt == "JPEG":
            img.save(out, format="JPEG", quality=95)
            return out.getvalue(), "jpg"
        img.save(out, format="PNG")  # lossless for everything that was not a JPEG
        return out.getvalue(), "png"
