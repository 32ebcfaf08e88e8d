"""One exception root for the agent, with the builtins callers catch kept as second bases."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent import data, errors, trainer
from edge_agent.backoff import Backoff
from edge_agent.config import AgentConfig
from edge_agent.state import LocalState


@pytest.mark.parametrize(("cls", "builtin"), [
    (errors.ConfigError, ValueError),
    (errors.DataError, ValueError),
    (errors.ModelContractError, ValueError),
    (errors.ModelRunError, RuntimeError),
    (errors.StateError, None),
    (errors.NotConnectedError, None),
    (errors.OversizedUpdateError, None),
])
def test_every_agent_error_derives_from_the_root(cls: type[Exception],
                                                 builtin: type[Exception] | None) -> None:
    assert issubclass(cls, errors.AgentError)
    if builtin is not None:
        assert issubclass(cls, builtin)


def test_the_names_callers_import_are_the_same_classes() -> None:
    assert data.DataError is errors.DataError
    assert trainer.ModelContractError is errors.ModelContractError
    assert trainer.ModelRunError is errors.ModelRunError


def test_structured_fields() -> None:
    exc = errors.OversizedUpdateError("too big", device="dev-1", seq=7, reason="too_large")
    assert (str(exc), exc.device, exc.seq, exc.reason) == ("too big", "dev-1", 7, "too_large")
    plain = errors.AgentError("x")
    assert (plain.device, plain.seq, plain.reason) == (None, None, None)


def test_bad_options_are_config_errors() -> None:
    with pytest.raises(errors.ConfigError, match="holdout"):
        AgentConfig(holdout=1.5)
    with pytest.raises(errors.ConfigError):
        Backoff(2.0, 1.0)


async def test_a_state_file_of_another_device_names_its_owner(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    async with LocalState(path, device_id="dev-a", fed="fed"):
        pass
    with pytest.raises(errors.StateError) as caught:
        async with LocalState(path, device_id="dev-b", fed="fed"):
            pass
    assert (caught.value.device, caught.value.reason) == ("dev-a", "foreign_state")
