"""``ModelSpec``: the description of a built-in model, as stored in config files."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

KINDS = ("softmax", "logistic", "mlp", "autoencoder")
ACTIVATIONS = ("relu", "tanh")

_FIELDS = ("kind", "n_features", "n_classes", "hidden", "activation", "seed")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class ModelSpec:
    """A model of the built-in family.

    ``softmax`` is multinomial logistic regression (no hidden layers, ``n_classes >= 2``);
    ``logistic`` is binary logistic regression (``n_classes`` 0 or 2, stored as 2);
    ``mlp`` has ``hidden`` layers with ``activation`` and a softmax output;
    ``autoencoder`` is an MLP encoder/decoder (``hidden`` e.g. ``(32, 8, 32)``, linear output,
    MSE loss, unlabeled, ``n_classes`` 0).
    """

    kind: str
    n_features: int
    n_classes: int = 0
    hidden: tuple[int, ...] = ()
    activation: str = "relu"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind: {self.kind!r} is not one of {', '.join(KINDS)}")
        if not _is_int(self.n_features) or self.n_features < 1:
            raise ValueError(f"n_features: must be a positive integer, got {self.n_features!r}")
        self._check_hidden()
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"activation: {self.activation!r} is not one of {', '.join(ACTIVATIONS)}"
            )
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed: must be a non-negative integer, got {self.seed!r}")
        self._check_classes()

    def _check_hidden(self) -> None:
        hidden = self.hidden
        if isinstance(hidden, list):
            # config files give lists; the frozen value keeps a hashable tuple
            hidden = tuple(hidden)
            object.__setattr__(self, "hidden", hidden)
        if not isinstance(hidden, tuple) or not all(_is_int(h) and h >= 1 for h in hidden):
            raise ValueError(f"hidden: must be a tuple of positive integers, got {hidden!r}")
        if self.kind in ("softmax", "logistic") and hidden:
            raise ValueError(f"hidden: a {self.kind} model has no hidden layers, got {hidden!r}")
        if self.kind in ("mlp", "autoencoder") and not hidden:
            raise ValueError(f"hidden: a {self.kind} model needs at least one hidden layer")

    def _check_classes(self) -> None:
        n = self.n_classes
        if not _is_int(n):
            raise ValueError(f"n_classes: must be an integer, got {n!r}")
        if self.kind == "logistic":
            if n not in (0, 2):
                raise ValueError(f"n_classes: a logistic model is binary (0 or 2), got {n}")
            object.__setattr__(self, "n_classes", 2)
        elif self.kind == "autoencoder":
            if n != 0:
                raise ValueError(f"n_classes: an autoencoder is unlabeled (0), got {n}")
        elif n < 2:
            raise ValueError(f"n_classes: a {self.kind} model needs at least 2 classes, got {n}")

    @property
    def supervised(self) -> bool:
        return self.kind != "autoencoder"

    def layer_sizes(self) -> list[int]:
        """Widths from input to output, e.g. ``[64, 256, 256, 10]``."""
        if self.kind == "autoencoder":
            out = self.n_features
        elif self.kind == "logistic":
            out = 1  # one logit; probabilities are reported as [1 - p, p]
        else:
            out = self.n_classes
        return [self.n_features, *self.hidden, out]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "n_features": self.n_features,
            "n_classes": self.n_classes,
            "hidden": list(self.hidden),
            "activation": self.activation,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        if not isinstance(data, Mapping):
            raise ValueError(f"model spec: expected a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_FIELDS))
        if unknown:
            raise ValueError(f"model spec: unknown field(s) {', '.join(map(str, unknown))}")
        missing = [name for name in ("kind", "n_features") if name not in data]
        if missing:
            raise ValueError(f"model spec: missing field(s) {', '.join(missing)}")
        hidden = data.get("hidden", ())
        if isinstance(hidden, list | tuple):
            hidden = tuple(hidden)
        return cls(
            kind=data["kind"],
            n_features=data["n_features"],
            n_classes=data.get("n_classes", 0),
            hidden=hidden,
            activation=data.get("activation", "relu"),
            seed=data.get("seed", 0),
        )
