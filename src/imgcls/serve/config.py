"""Settings of one server: upload and pixel limits, the dynamic-batching window, who may call it, with the reason for each default."""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import UsageError

# What a browser sends as Origin: scheme://host[:port], nothing after it (a trailing '/' would never match).
_ORIGIN = re.compile(r"https?://[^/\s]+")


@dataclass
class ServeConfig:
    max_upload_mb: float = 16.0  # per request: a 12-Mpx phone JPEG is 3-8 MB, and this bounds a request's memory
    max_files: int = 16  # per request; more images belong in `imgcls predict` on a folder
    # Per image, read from its header before decoding (413 over it): a few kB of PNG can hold 81 Mpx, and
    # decoding holds the whole image, 1-4 bytes a pixel. 40 passes a 12-Mpx phone photo and a 24-Mpx DSLR one.
    # Per image, not per request: decodes run `decode_threads` at a time, so memory is bounded by images
    # in flight, not by how many a request brings. (Pillow's own bomb limit, 89.5 Mpx, still applies above it.)
    max_megapixels: float = 40.0
    # Images decoded at once, per worker process. Server memory stays under its idle size plus
    # decode_threads x the cost of a max_megapixels image: at the defaults, idle + ~400 MB (32 uploads of
    # 40-Mpx RGBA PNGs, 8 at a time: 1042 MB idle, 1415 MB peak; 8 threads on 81-Mpx PNGs: 1938 MB peak;
    # bench/serve.py --parts memory). Decoding is CPU-bound: more threads than cores buy no speed, only memory.
    decode_threads: int = 2
    # images per model call (1 turns batching off). Past ~16 a CPU batch costs more per image, not less:
    # MobileNetV2 at 224 px on 2 cores, 82 img/s at 1, 135 at 16, 106 at 32 (bench/serve.py's model).
    max_batch: int = 16
    batch_window_ms: float = 2.0  # how long a request waits for others to join its batch: short next to a model call
    thumbnail_px: int = 96  # longest side of a look-alike thumbnail in /similar
    # Host header names answered (hosts.HostCheck: exact, '*.example.com' or '*'); any other
    # gets 400, which stops DNS rebinding. Empty: any Host. `serve` adds the names of the address it binds to.
    allowed_hosts: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()  # origins whose pages may read the answers; none by default, as a local tool needs

    def __post_init__(self):
        for name in ("max_upload_mb", "max_files", "max_megapixels", "decode_threads", "max_batch", "thumbnail_px"):
            if not getattr(self, name) > 0:
                raise UsageError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.batch_window_ms >= 0:
            raise UsageError(f"batch_window_ms must be 0 or more, got {self.batch_window_ms}")
        self.allowed_hosts, self.cors_origins = tuple(self.allowed_hosts), tuple(self.cors_origins)
        for host in self.allowed_hosts:
            if "*" in host[1:] or (host.startswith("*") and host != "*" and not host.startswith("*.")):
                raise UsageError(f"--allowed-host takes a name, '*.example.com' or '*', got {host!r}")
        for origin in self.cors_origins:
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                raise UsageError(f"--cors takes an origin like https://example.com:8080 "
                                 f"(scheme, host and port, no path), got {origin!r}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_pixels(self) -> int:
        return int(self.max_megapixels * 1_000_000)
