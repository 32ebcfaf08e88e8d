"""Server optimizers, one and two steps, against numbers computed by hand (Reddi et al. 2021,
Algorithm 2: m_-1 = 0, v_-1 = tau^2, no bias correction)."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from orchestrator.aggregation import (
    FedAdagrad,
    FedAdam,
    FedYogi,
    OptimizerStateError,
    ServerSGD,
    optimizer_from_config,
)

X0 = {"w": np.array([1.0, -1.0], np.float32)}
D1 = {"w": np.array([0.5, -0.25], np.float32)}
D2 = {"w": np.array([0.01, 0.01], np.float32)}


def test_server_sgd_is_fedavg_and_momentum_accumulates() -> None:
    p = {"w": np.array([1.0, 2.0], np.float32)}
    assert ServerSGD().step(p, {"w": np.array([0.5, -1.0], np.float32)})["w"].tolist() == [
        1.5, 1.0]
    opt = ServerSGD(lr=0.5, momentum=0.9)
    p1 = opt.step(p, {"w": np.array([1.0, 1.0], np.float32)})  # u = d = [1, 1]
    assert p1["w"].tolist() == pytest.approx([1.5, 2.5])
    p2 = opt.step(p1, {"w": np.array([2.0, 0.0], np.float32)})  # u = 0.9 [1, 1] + [2, 0]
    assert p2["w"].tolist() == pytest.approx([1.5 + 0.5 * 2.9, 2.5 + 0.5 * 0.9])


def test_fedadam_two_steps() -> None:
    opt = FedAdam(lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    before = copy.deepcopy((X0, D1))
    x1 = opt.step(X0, D1)
    # m = 0.1 * 0.5 = 0.05 ; v = 0.99 * 1e-6 + 0.01 * 0.25 = 0.00250099
    # x = 1 + 0.1 * 0.05 / (sqrt(0.00250099) + 0.001) = 1.09802019
    assert x1["w"].tolist() == pytest.approx([1.09802019, -1.096080706], rel=1e-6)
    x2 = opt.step(x1, D2)
    # m = 0.9 * 0.05 + 0.1 * 0.01 = 0.046 ; v = 0.99 * 0.00250099 + 0.01 * 1e-4 = 0.00247698
    assert x2["w"].tolist() == pytest.approx([1.188626183, -1.179045983], rel=1e-6)
    assert opt.steps == 2
    assert X0["w"].tolist() == before[0]["w"].tolist()  # inputs untouched
    assert D1["w"].tolist() == before[1]["w"].tolist()


def test_fedyogi_two_steps() -> None:
    opt = FedYogi(lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    x1 = opt.step(X0, D1)
    # v0 = 1e-6 < d^2, so v grows: 1e-6 + 0.01 * 0.25 = 0.002501
    assert x1["w"].tolist() == pytest.approx([1.098019998, -1.096079968], rel=1e-6)
    x2 = opt.step(x1, D2)
    # now v > d^2 = 1e-4, so v shrinks by 0.01 * 1e-4 only: 0.0025 (Adam's would decay 1%)
    assert x2["w"].tolist() == pytest.approx([1.188216076, -1.178772276], rel=1e-6)


def test_fedadagrad_accumulates() -> None:
    opt = FedAdagrad(lr=1.0, beta1=0.0, tau=1e-3)
    x1 = opt.step({"w": np.zeros(1, np.float32)}, {"w": np.array([2.0], np.float32)})
    # m = 2, v = 1e-6 + 4 ; x = 2 / (sqrt(4.000001) + 0.001)
    assert x1["w"][0] == pytest.approx(2 / (np.sqrt(4.000001) + 1e-3), rel=1e-6)


def test_state_round_trip_continues_identically() -> None:
    a = FedAdam(lr=0.1)
    x1 = a.step(X0, D1)
    b = FedAdam(lr=0.1)
    b.load_state_dict(a.state_dict())
    assert b.steps == 1
    assert a.step(x1, D2)["w"].tobytes() == b.step(x1, D2)["w"].tobytes()

    sgd = ServerSGD(lr=1.0, momentum=0.5)
    sgd.step(X0, D1)
    sgd2 = ServerSGD(lr=1.0, momentum=0.5)
    sgd2.load_state_dict(sgd.state_dict())
    assert sgd.step(X0, D2)["w"].tobytes() == sgd2.step(X0, D2)["w"].tobytes()


def test_bad_state_and_inputs_are_refused() -> None:
    with pytest.raises(OptimizerStateError):
        FedYogi(lr=0.1).load_state_dict(FedAdam(lr=0.1).state_dict())  # another optimizer's
    with pytest.raises(OptimizerStateError):
        FedAdam(lr=0.1).load_state_dict(b"\xc1garbage")
    with pytest.raises(ValueError):
        FedAdam(lr=0.1).step(X0, {"w": np.zeros(3, np.float32)})
    with pytest.raises(ValueError):
        FedAdam(lr=0.1, beta1=1.0)
    with pytest.raises(ValueError):
        FedAdam(lr=0.1, tau=0.0)
    with pytest.raises(ValueError):
        ServerSGD(lr=-1.0)


def test_from_config() -> None:
    opt = optimizer_from_config("FedYogi", lr=0.05)
    assert isinstance(opt, FedYogi) and opt.lr == 0.05
    assert isinstance(optimizer_from_config("sgd"), ServerSGD)
    with pytest.raises(ValueError):
        optimizer_from_config("lamb")
    with pytest.raises(ValueError):
        optimizer_from_config("fedadam")  # lr is required
