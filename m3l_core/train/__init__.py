"""Training: the M3L framework and its baselines (incl. CPS-Seg) as configuration of one loop.

``config`` (the TrainConfig schema; ``typed_yaml`` is its generic YAML engine), ``losses``
(OHEM and pseudo-label CE), ``masking`` (per-sample modality masks, the batch plan of each
framework), ``ema`` (the mean teacher), ``optim`` (AdamW groups, poly lr), ``steps`` (which
samples each rank loads), ``train_data`` (opening and checking the splits), ``init_weights``
(``model.init``, fine-tuning), ``run_state`` (resumable state, metrics.jsonl, interruptions),
``cps`` (CPS-Seg's two-network pair and cross pseudo supervision), ``update`` (one optimizer
step of any framework) and ``trainer`` (the loop, DDP). The command line is
:mod:`m3l_core.cli.train` (``training/train_m3l.py``); docs/baselines_training.md describes the
baseline options.
"""
from m3l_core.train.config import FRAMEWORKS, ConfigError, TrainConfig, load_config
from m3l_core.train.ema import EMATeacher, ema_decay
from m3l_core.train.losses import compute_losses, ohem_cross_entropy, ohem_keep_mask, pseudo_label_cross_entropy
from m3l_core.train.masking import BatchPlan, draw_masks, plan_batch
from m3l_core.train.optim import build_optimizer, get_lr, set_lr

__all__ = [
    "FRAMEWORKS", "ConfigError", "TrainConfig", "load_config", "EMATeacher", "ema_decay", "compute_losses",
    "ohem_cross_entropy", "ohem_keep_mask", "pseudo_label_cross_entropy", "BatchPlan", "draw_masks",
    "plan_batch", "build_optimizer", "get_lr", "set_lr",
]
