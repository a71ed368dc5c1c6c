"""What the launcher tells the processes it starts: the training job, as JSON.

The launcher (executor.py, no TensorFlow import) writes a :class:`TrainJob`; the chief
(trainer.py) reads it. Keeping it plain data means the same job runs as a local process or
in a pod.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["InputData", "ModelInput", "TrainJob"]


@dataclass(frozen=True)
class ModelInput:
    """A feature the model reads: categorical (with its cardinality) or numeric (cardinality None)."""

    name: str
    cardinality: int | None = None


@dataclass(frozen=True)
class InputData:
    """A dataset's files and how to parse them: ``columns`` maps a column to int64, float or bytes."""

    format: str  # tfrecord or parquet
    files: list[str]
    columns: dict[str, str]
    rows: int | None = None


@dataclass(frozen=True)
class TrainJob:
    model: str
    inputs: list[ModelInput]
    label: str
    train: InputData
    checkpoint_dir: str
    result_file: str
    model_attrs: dict[str, Any] = field(default_factory=dict)
    custom_models: dict[str, str] = field(default_factory=dict)  # model name -> "module:callable"
    optimizer: str = "adagrad"
    learning_rate: float = 0.05
    # optimizer "dc-asgd" only: "adaptive" or "constant"; lambda (None: the variant's default); the
    # adaptive variant's mean-square decay
    dc_variant: str = "adaptive"
    dc_lambda: float | None = None
    dc_mean_square_decay: float = 0.95
    batch_size: int = 512
    steps: int = 1000
    checkpoint_every: int = 500
    seed: int = 0
    cache_dir: str | None = None  # where Parquet input is converted to TFRecord shards
    # Where the chief appends a JSON line per scheduled call while it trains (trainer.Progress), for the
    # launcher to report as module.progress events and draw as the training curve.
    progress_file: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainJob:
        data = json.loads(text)
        data["inputs"] = [ModelInput(**i) for i in data["inputs"]]
        data["train"] = InputData(**data["train"])
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> TrainJob:
        return cls.from_json(Path(path).read_text())
