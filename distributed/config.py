"""JobConfig: serial training's Config plus how the work is split, checked before anything starts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from numpy_cnn.config import Config

FAILURE_POLICIES = ("reassign", "abort")


@dataclass
class JobConfig(Config):
    """A data-parallel run: the same seed and flags give the same weights whatever `workers` is."""

    workers: int = 2
    shards: int = 4  # micro-shards per global batch; fixes the reduction tree (serial's default is 2)
    timeout: float = 5.0  # seconds of silence after which a worker, or the server, counts as dead
    join_timeout: float = 120.0  # seconds to wait for workers to connect and build their replica
    on_worker_failure: str = "reassign"  # or "abort"
    max_restarts: int = 3  # how often `launch` restarts dead workers, in all

    def check(self) -> JobConfig:
        """Raise ValueError naming the first flag that makes this run impossible."""
        super().check()
        if self.workers < 1 or self.shards < 1:
            raise ValueError(f"--workers and --shards must be positive, got {self.workers}, {self.shards}")
        if self.shards % self.workers:
            raise ValueError(
                f"--shards {self.shards} is not divisible by --workers {self.workers}: "
                "every worker computes the same number of micro-shards"
            )
        if self.batch_size < self.shards:
            raise ValueError(f"--batch-size {self.batch_size} is smaller than --shards {self.shards}")
        if not (self.timeout > 0 and self.join_timeout > 0):
            raise ValueError(f"timeouts must be positive, got {self.timeout}, {self.join_timeout}")
        if self.join_timeout < self.timeout:
            raise ValueError(
                f"--join-timeout {self.join_timeout:g} is shorter than --timeout {self.timeout:g}: a "
                "restarted worker could give up before the server has dropped the one it replaces"
            )
        if self.on_worker_failure not in FAILURE_POLICIES:
            raise ValueError(
                f"--on-worker-failure must be one of {', '.join(FAILURE_POLICIES)}, "
                f"got {self.on_worker_failure!r}"
            )
        if self.max_restarts < 0:
            raise ValueError(f"--max-restarts must be 0 or more, got {self.max_restarts}")
        return self

    def to_dict(self) -> dict[str, Any]:
        """The job's settings as sent to the server and the workers (`threads` is serial training's)."""
        return {k: v for k, v in asdict(self).items() if k != "threads"}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}")
        return cls(**data).check()
