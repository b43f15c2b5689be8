"""Which device and dtype a run uses, and which GPU each torchrun rank takes.

Rules (checked before any model is loaded):

* ``device=None`` is ``cuda`` when CUDA is available, else ``cpu``. Under
  torchrun (``LOCAL_RANK`` set) ``cuda`` means ``cuda:LOCAL_RANK``: every rank
  takes its own GPU, and a node with more ranks than GPUs is refused.
* ``dtype=None`` is float32 on the CPU; on an accelerator it is the
  checkpoint's own (the dtype its weights are stored in, e.g. bf16 for Flux).
* Steps, caches and the methods' arithmetic stay in float32 whatever the
  network's dtype: only the network runs in ``dtype``.
"""

from __future__ import annotations

import json
import os
import struct
import time
from pathlib import Path

import torch

from hasten.errors import HastenError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}
#: safetensors' dtype names for the floating types a checkpoint may be stored in
_STORED = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def local_rank() -> int | None:
    """This process's rank on its node under torchrun (``LOCAL_RANK``), or None outside torchrun."""
    value = os.environ.get("LOCAL_RANK")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise HastenError(f"LOCAL_RANK must be an integer, got {value!r}") from None


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The device a run uses, validated: ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; None picks one.

    Under torchrun a bare ``cuda`` becomes ``cuda:LOCAL_RANK``.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise HastenError(f"--device {device!r} is not a device; valid: cpu, cuda, cuda:N, mps") from None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise HastenError("--device mps is not available on this machine; use cpu")
        return dev
    if dev.type != "cuda":
        raise HastenError(f"--device {device!r} is not supported; valid: cpu, cuda, cuda:N, mps")
    if not torch.cuda.is_available():
        raise HastenError(f"--device {device} needs CUDA, which this machine (or this torch build, "
                          f"{torch.__version__}) does not have; use --device cpu")
    count = torch.cuda.device_count()
    rank = local_rank()
    if dev.index is None and rank is not None:
        if rank >= count:
            raise HastenError(f"this node runs more ranks than it has GPUs: LOCAL_RANK={rank} but only {count} "
                              f"GPU(s) are visible; launch at most {count} processes per node "
                              f"(torchrun --nproc_per_node {count})")
        dev = torch.device("cuda", rank)
    index = torch.cuda.current_device() if dev.index is None else dev.index
    if index >= count:
        raise HastenError(f"--device {device}: only {count} GPU(s) are visible (cuda:0..cuda:{count - 1})")
    return torch.device("cuda", index)


def parse_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """A dtype from its name (``float32``, ``bfloat16``/``bf16``, ``float16``/``fp16``), or None."""
    if name is None or isinstance(name, torch.dtype):
        if isinstance(name, torch.dtype) and name not in DTYPES.values():
            raise HastenError(f"dtype {name} is not supported; valid: float32, bfloat16, float16")
        return name
    key = str(name).lower().removeprefix("torch.")
    if key not in DTYPES:
        raise HastenError(f"--dtype {name!r} is not supported; valid: float32, bfloat16 (bf16), float16 (fp16)")
    return DTYPES[key]


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device,
                  stored: torch.dtype | None = None) -> torch.dtype:
    """The network's dtype: the one asked for, else float32 on the CPU and the stored one elsewhere.

    A bf16 checkpoint on a GPU without bf16 defaults to float32; asking for
    bf16 there is refused.
    """
    chosen = parse_dtype(dtype)
    no_bf16 = device.type == "cuda" and not torch.cuda.is_bf16_supported()
    if chosen is None:
        chosen = torch.float32 if device.type == "cpu" else (stored or torch.float32)
        if chosen == torch.bfloat16 and no_bf16:  # an older GPU: float32, not a float16 that may overflow
            chosen = torch.float32
    if chosen == torch.bfloat16 and no_bf16:
        raise HastenError(f"--dtype bfloat16 is not supported by {torch.cuda.get_device_name(device)}; "
                          "use float16 or float32")
    return chosen


def stored_dtype(folder: str | Path) -> torch.dtype | None:
    """The floating dtype the denoising network of a saved pipeline is stored in (safetensors header).

    Reads only the header of the first weights file of ``transformer/`` or
    ``unet/``; None when there is no such file.
    """
    folder = Path(folder)
    for sub in ("transformer", "unet"):
        files = sorted(p for p in (folder / sub).glob("*.safetensors") if p.name.count(".") == 1)
        if files:
            return _header_dtype(files[0])
    return None


def _header_dtype(path: Path) -> torch.dtype | None:
    """The most common floating dtype in a safetensors header; a broken file (a cut download) is a HastenError."""
    try:
        with open(path, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            if not 0 < size <= path.stat().st_size - 8:
                raise ValueError(f"its header claims {size} bytes")
            header = json.loads(fh.read(size))
        if not isinstance(header, dict):
            raise ValueError("its header is not a JSON object")
    except (OSError, struct.error, ValueError, UnicodeDecodeError) as err:
        raise HastenError(f"{path} is not a readable safetensors file (truncated or corrupt; download it again): "
                          f"{err}") from None
    counts: dict[torch.dtype, int] = {}
    for name, entry in header.items():
        if name != "__metadata__" and isinstance(entry, dict) and entry.get("dtype") in _STORED:
            counts[_STORED[entry["dtype"]]] = counts.get(_STORED[entry["dtype"]], 0) + 1
    return max(counts, key=counts.get) if counts else None


def synchronize(device: torch.device | str | None) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so host clocks measure finished work."""
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elif dev is not None and dev.type == "mps":
        torch.mps.synchronize()


class Stopwatch:
    """Elapsed wall time of work queued on ``device``: CUDA events on a GPU, the host clock elsewhere.

    ``elapsed()`` records an event and waits for it, so the time counts the
    device work queued so far (all overhead included), not just its launch.
    """

    def __init__(self, device: torch.device | str | None):
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.cuda = self.device.type == "cuda"
        self.start_event = None
        self.start_s = 0.0

    def start(self) -> "Stopwatch":
        if self.cuda:
            self.start_event = torch.cuda.Event(enable_timing=True)
            self.start_event.record(torch.cuda.current_stream(self.device))
        else:
            synchronize(self.device)
        self.start_s = time.perf_counter()
        return self

    def elapsed(self) -> float:
        """Seconds since :meth:`start`, once the device has finished what was queued until now."""
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record(torch.cuda.current_stream(self.device))
            end.synchronize()
            return self.start_event.elapsed_time(end) / 1000.0
        synchronize(self.device)
        return time.perf_counter() - self.start_s
