"""``AgentConfig``: the agent's tunables (timings, batch sizes), validated once."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError

AGENT_VERSION = "fedmq-agent/0.1"
MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class AgentConfig:
    holdout: float = 0.2
    """Share of the local data kept aside for federated evaluation (0: evaluate on all)."""
    window: int = 5000
    """A data directory: train on the newest this many samples."""
    data_poll_s: float = 2.0
    """A data directory: look for new files this often (a file is read once two looks agree)."""
    max_data_file_bytes: int = 64 * MiB
    """A data directory: a bigger file is refused unread (memory stays window + one file)."""
    heartbeat_s: float | None = None
    """Overrides the interval the orchestrator gives in ``Enrolled``."""
    enroll_retry_s: float = 5.0
    ack_timeout_s: float = 10.0
    """Resend an unacked outbox entry after this long (doubling per attempt)."""
    max_ack_timeout_s: float = 120.0
    batch_entries: int = 32
    batch_bytes: int = 8 * MiB - 64 * 1024
    """Payload bound of one ``updates`` batch, under the broker's 8 MiB packet limit."""
    model_wait_s: float = 30.0
    """How long a task waits for the retained model it names."""
    publish_wait_s: float = 30.0
    """How long an evaluation report waits for a connection before it is dropped."""
    max_queued_tasks: int = 16
    device_class: str = ""
    exit_on_revoke: bool = False
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    auth_retry_s: float = 600.0
    """After 3 refusals as not authorized in a row, try the broker only about this often."""
    keepalive_s: int = 30
    session_expiry_s: int = 24 * 3600
    intra_op_threads: int = 1
    probe_interval_s: float = 0.25
    """During training, read the probe at most this often (battery floor, overheating)."""
    link_poll_s: float = 1.0
    """How often the probe's ``link_up`` is checked (a simulated link schedule)."""
    seed: int | None = None
    """Seed for shuffling and stochastic rounding (never for the DP noise)."""
    client_id: str | None = None
    """MQTT client id; default ``fedmq-{device_id}`` (stable: the broker keeps the session)."""
    key_rotation_s: float | None = None
    """Rotate the device key this long after the last rotation (None: only on request)."""
    key_rotation_retry_s: float = 30.0
    """Send a pending ``KeyRotation`` again this often until the orchestrator confirms it."""
    simulated_step_ms: float = 0.0
    """Simulation only: stretch each training step to this many wall-clock ms (a slower
    device); 0 = run at this machine's speed."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.holdout < 1.0:
            raise ConfigError(f"holdout must be in [0, 1), got {self.holdout!r}")
        positive = {
            "enroll_retry_s": self.enroll_retry_s, "ack_timeout_s": self.ack_timeout_s,
            "max_ack_timeout_s": self.max_ack_timeout_s, "batch_entries": self.batch_entries,
            "batch_bytes": self.batch_bytes, "model_wait_s": self.model_wait_s,
            "publish_wait_s": self.publish_wait_s, "max_queued_tasks": self.max_queued_tasks,
            "backoff_base_s": self.backoff_base_s, "keepalive_s": self.keepalive_s,
            "auth_retry_s": self.auth_retry_s,
            "session_expiry_s": self.session_expiry_s,
            "intra_op_threads": self.intra_op_threads,
            "probe_interval_s": self.probe_interval_s, "link_poll_s": self.link_poll_s,
            "key_rotation_retry_s": self.key_rotation_retry_s,
            "window": self.window, "data_poll_s": self.data_poll_s,
            "max_data_file_bytes": self.max_data_file_bytes,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ConfigError(f"{name} must be positive, got {value!r}")
        if self.heartbeat_s is not None and not self.heartbeat_s > 0:
            raise ConfigError(f"heartbeat_s must be positive, got {self.heartbeat_s!r}")
        if self.key_rotation_s is not None and not self.key_rotation_s > 0:
            raise ConfigError(f"key_rotation_s must be positive, got {self.key_rotation_s!r}")
        if self.backoff_cap_s < self.backoff_base_s:
            raise ConfigError("backoff_cap_s must be >= backoff_base_s")
        if self.batch_bytes > 8 * MiB:
            raise ConfigError("batch_bytes must stay under the 8 MiB packet limit")
