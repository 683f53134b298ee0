"""What every source family shares: the ``Source`` record, image decoding and the label check."""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = ["Source", "Decoded", "decode_all", "stack", "check_labels"]

# what a source's reader returns: uint8 images (N, C, H, W), int64 labels, class names (may be empty)
Decoded = Tuple[torch.Tensor, torch.Tensor, List[str]]


@dataclass(frozen=True)
class Source:
    """How one local format is found and read. ``find`` returns the path to read, or None."""

    layout: str  # shown in the "no local copy" error
    find: Callable[[Path, str], Optional[Path]]
    read: Callable[[Path, str], Decoded]


def _decode(data: bytes, origin: str, mode: str) -> np.ndarray:
    """One encoded image -> HWC uint8 in PIL ``mode`` ("RGB" or "L"); palette images are converted too."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            array = np.asarray(im.convert(mode), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ValueError(f"corrupt image in {origin}: {e}; re-download that file") from None
    return array if array.ndim == 3 else array[:, :, None]


def stack(arrays: Sequence[np.ndarray], origin: str) -> torch.Tensor:
    """HWC arrays of one shape -> a contiguous (N, C, H, W) uint8 tensor."""
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"images of different shapes {sorted(shapes)[:3]} in {origin}; is it the right data set?")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _progress(total: int, description: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeRemainingColumn(), transient=True)
    return progress, progress.add_task(description, total=total)


def decode_all(blobs: Sequence[bytes], origin: str, mode: str = "RGB") -> torch.Tensor:
    """Encoded images (PNG, JPEG, ...) -> (N, C, H, W) uint8, with a progress bar."""
    progress, task = _progress(len(blobs), f"decoding {origin}")
    arrays = []
    with progress:
        for i, blob in enumerate(blobs):
            arrays.append(_decode(blob, origin, mode))
            if i % 512 == 0:
                progress.update(task, completed=i)
    return stack(arrays, origin)


def check_labels(labels: torch.Tensor, num_classes: int, num_images: int, origin: Any) -> None:
    """Refuse a split whose labels do not match its images or its classes, before anything is cached."""
    if len(labels) != num_images:
        raise ValueError(f"{origin}: {num_images} images but {len(labels)} labels; re-download or rebuild it")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"{origin}: labels run from {int(labels.min())} to {int(labels.max())}, outside the "
                         f"{num_classes} classes; re-download or rebuild it")
