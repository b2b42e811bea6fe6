"""The self-supervised trainer (paper Sec. 3.4, Appendices F-G); see trainer.py."""
from .checkpoint import atomic_save, export_model, load_generator, read_checkpoint
from .config import TrainSettings, load_config, resolve_config
from .trainer import STAGES, ShardedOrder, Trainer, init_distributed, read_log, stage_bounds

__all__ = ["STAGES", "ShardedOrder", "Trainer", "TrainSettings", "atomic_save", "export_model",
           "init_distributed", "load_config", "load_generator", "read_checkpoint", "read_log",
           "resolve_config", "stage_bounds"]
