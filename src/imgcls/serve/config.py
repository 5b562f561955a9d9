"""Settings of one server: upload limits and the dynamic-batching window, with the reason for each default."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError


@dataclass
class ServeConfig:
    max_upload_mb: float = 16.0  # per request: a 12-Mpx phone JPEG is 3-8 MB, and this bounds a request's memory
    max_files: int = 16  # per request; more images belong in `imgcls predict` on a folder
    # images per model call (1 turns batching off). Past ~16 a CPU batch costs more per image, not less:
    # MobileNetV2 at 224 px on 2 cores, 82 img/s at 1, 135 at 16, 106 at 32 (bench/serve.py's model).
    max_batch: int = 16
    batch_window_ms: float = 2.0  # how long a request waits for others to join its batch: short next to a model call
    thumbnail_px: int = 96  # longest side of a look-alike thumbnail in /similar

    def __post_init__(self):
        for name in ("max_upload_mb", "max_files", "max_batch", "thumbnail_px"):
            if not getattr(self, name) > 0:
                raise UsageError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.batch_window_ms >= 0:
            raise UsageError(f"batch_window_ms must be 0 or more, got {self.batch_window_ms}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)
