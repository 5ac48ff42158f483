"""Training: one engine for every model family, the run folder it writes, and the runs it loads.

* :func:`train` trains a family into a run folder (:mod:`~t2i_helpers.train.engine`);
* :func:`load_run` rebuilds a run to sample from, :func:`load_shipped` a shipped checkpoint, and
  :func:`load_or_train` is the notebooks' "load if present, else train";
* :class:`TrainConfig` says how to train, with one named config per tier;
* :mod:`~t2i_helpers.train.captioning` trains, ships and loads the image-to-text captioner.
"""
from t2i_helpers.train.config import CHECKPOINT, CONFIG, METRICS, SESSION_FIELDS, TrainConfig
from t2i_helpers.train.device import autocast, pick_device, pick_precision, use_fast_gpu_kernels
from t2i_helpers.train.engine import RunResult, TrainingData, prepare_data, text_config_for, train
from t2i_helpers.train.log import read_metrics
from t2i_helpers.train.run import LoadedRun, generate_images, load_run
from t2i_helpers.train.shipped import export_run, load_or_train, load_shipped, shipped_dir
from t2i_helpers.train.captioning import (captioner_train_config, export_captioner, load_captioner,
                                          load_or_train_captioner, load_shipped_captioner, train_captioner)

__all__ = [
    "CHECKPOINT", "CONFIG", "METRICS", "SESSION_FIELDS", "TrainConfig", "autocast", "pick_device",
    "pick_precision", "use_fast_gpu_kernels", "RunResult", "TrainingData", "prepare_data", "text_config_for",
    "train", "read_metrics", "LoadedRun", "generate_images", "load_run", "export_run", "load_or_train",
    "load_shipped", "shipped_dir", "captioner_train_config", "export_captioner", "load_captioner",
    "load_or_train_captioner", "load_shipped_captioner", "train_captioner",
]
