"""Lightning training: modules, model specs, plug-in loss terms, callbacks."""

from sns.training.callbacks import EMAWeightAveraging, ModelCheckpoint, Throughput, averaged_model
from sns.training.loggers import CSVLogger
from sns.models import MODEL_KINDS, build_model, model_task, resolve_spec
from sns.training.modules import PairDenoiserModule, PDERefinerModule, SurrogateModule
from sns.training.terms import LossTerm, UnrollSchedule

__all__ = [
    "MODEL_KINDS",
    "CSVLogger",
    "EMAWeightAveraging",
    "LossTerm",
    "ModelCheckpoint",
    "PDERefinerModule",
    "PairDenoiserModule",
    "SurrogateModule",
    "Throughput",
    "UnrollSchedule",
    "averaged_model",
    "build_model",
    "model_task",
    "resolve_spec",
]
