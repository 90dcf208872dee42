"""EpochStats: where an epoch's steps spent their time on the server, and how a record shows it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class EpochStats:
    """Sums over an epoch's steps: training loss and accuracy, and where each step's time went."""

    steps: int = 0
    samples: int = 0
    loss: float = 0.0
    correct: int = 0
    compute: float = 0.0  # the workers' forward/backward (the slowest worker's, when in parallel)
    comm: float = 0.0  # the rest of the wait for gradients: encoding, the wire, decoding, stragglers
    update: float = 0.0  # summing the tree and Adam
    bytes: int = 0  # array and header frames sent and received by the server
    extra: dict = field(default_factory=dict)

    def timing(self) -> dict:
        """Per-step means, in ms (they add up to the step time) and bytes."""
        n = max(self.steps, 1)
        ms = {k: round(1000 * getattr(self, k) / n, 3) for k in ("compute", "comm", "update")}
        return {
            "step_ms": round(sum(ms.values()), 3),
            "compute_ms": ms["compute"],
            "comm_ms": ms["comm"],
            "update_ms": ms["update"],
            "bytes_per_step": round(self.bytes / n),
        }


def format_timing(r: dict) -> str:
    return (
        f"step {r['step_ms']:.2f} ms = compute {r['compute_ms']:.2f} + comm {r['comm_ms']:.2f} "
        f"+ update {r['update_ms']:.2f}, {r['bytes_per_step'] / 1e6:.2f} MB/step"
    )
