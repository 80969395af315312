"""Device values copied to the host without waiting for the device.

The runtime decides on the host which variant each call runs. A device value it reads there (a measured change,
whether the caches are finite, the timestep) would stall the launch queue if read at once: instead a copy to
pinned host memory is started and read only once it has landed, a call or more later.
"""

from __future__ import annotations

import torch


def is_on_host(value: torch.Tensor) -> bool:
    """Whether reading ``value`` on the host is free (no wait for a device)."""
    return value.device.type == "cpu"


def read_now(value: torch.Tensor) -> torch.Tensor:
    """``value`` on the host at once: for a device tensor, a wait for every kernel launched before it. Every
    such read of the runtime goes through here."""
    return value.detach().to("cpu")


class HostCopy:
    """A device tensor on its way to the host: :meth:`value` is readable once :meth:`ready`, which never waits."""

    def __init__(self, value: torch.Tensor) -> None:
        value = value.detach()
        self._landed: torch.cuda.Event | None = None
        if value.device.type == "cuda":
            self._host = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
            self._host.copy_(value, non_blocking=True)
            self._landed = torch.cuda.Event()
            self._landed.record()
        else:
            # A CPU tensor's copy is synchronous and free; other accelerators copy with a wait.
            self._host = value.to("cpu", copy=True)

    def ready(self) -> bool:
        return self._landed is None or self._landed.query()

    def wait(self) -> None:
        """Block until the copy has landed: a wait for the device's work up to the copy, not for later work."""
        if self._landed is not None:
            self._landed.synchronize()

    def value(self) -> torch.Tensor:
        assert self.ready(), "a host copy is read only once it has landed"
        return self._host
