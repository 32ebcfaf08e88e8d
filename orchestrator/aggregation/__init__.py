"""Aggregation maths: pure, synchronous numpy with no I/O (run it in a worker thread).

One algorithm per module (:mod:`.fedbuff`, :mod:`.fedavg`), the interface in :mod:`.strategy`,
the strategies that wrap one (clipping, robust reducers, the server optimizer's step) in
:mod:`.wrappers`, the maths in :mod:`.reducers`, :mod:`.staleness` and :mod:`.optimizers`, the
ingestion checks in :mod:`.validation`, anomaly screening and isolation in :mod:`.screening`
and the storage encoding of parameters in :mod:`.codec`.
"""

from .codec import ParamsCodecError, decode_params, encode_params
from .fedavg import FedAvg
from .fedbuff import FedBuff
from .optimizers import (
    FedAdagrad,
    FedAdam,
    FedYogi,
    OptimizerStateError,
    ServerSGD,
    optimizer_from_config,
)
from .reducers import (
    clip_by_norm,
    coordinate_median,
    cosine,
    global_norm,
    trimmed_mean,
    weighted_mean,
)
from .screening import (
    DIRECTION_OUTLIER,
    NON_FINITE,
    NORM_OUTLIER,
    AnomalyScreen,
    IsolationPolicy,
    ScreeningStateError,
    ScreenItem,
    ScreenResult,
)
from .staleness import Constant, Hinge, Polynomial, staleness_from_config
from .strategy import (
    AggregateResult,
    BufferedUpdate,
    Params,
    ReducerName,
    ServerOptimizer,
    StalenessFn,
    Strategy,
    UpdateLike,
)
from .validation import check_delta
from .wrappers import Clipped, RobustReduction, ServerStep

__all__ = [
    "DIRECTION_OUTLIER",
    "NON_FINITE",
    "NORM_OUTLIER",
    "AggregateResult",
    "AnomalyScreen",
    "BufferedUpdate",
    "Clipped",
    "Constant",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedBuff",
    "FedYogi",
    "Hinge",
    "IsolationPolicy",
    "OptimizerStateError",
    "Params",
    "ParamsCodecError",
    "Polynomial",
    "ReducerName",
    "RobustReduction",
    "ScreenItem",
    "ScreenResult",
    "ScreeningStateError",
    "ServerOptimizer",
    "ServerSGD",
    "ServerStep",
    "StalenessFn",
    "Strategy",
    "UpdateLike",
    "check_delta",
    "clip_by_norm",
    "coordinate_median",
    "cosine",
    "decode_params",
    "encode_params",
    "global_norm",
    "optimizer_from_config",
    "staleness_from_config",
    "trimmed_mean",
    "weighted_mean",
]
