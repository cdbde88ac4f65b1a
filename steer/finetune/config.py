"""Fine-tuning configs: one ``@dataclass`` per method on a shared base (``config_base.TrainConfig``), fields
grouped, each with ``help`` metadata (the CLI reuses it), validated in ``__post_init__``; the methods that train on
their own samples in ``config_online``, those that fit stored samples in ``config_fitting``. This module is the
registry (``CONFIGS``, method name -> config class) and the one place the configs are imported from.

Defaults are the papers' where one applies (stated in each method's module); ``learning_rate`` and
the step counts are for small runs and are meant to be set.
"""
from steer.finetune.config_base import TRACKERS, TrainConfig, opt, tracker_names  # noqa: F401
from steer.finetune.config_fitting import (DistillConfig, DPOConfig, InPOConfig, KTOConfig, MaPOConfig,  # noqa: F401
                                           PreferenceConfig, SoarConfig)
from steer.finetune.config_online import (D3POConfig, DraftConfig, GRPOConfig, NFTConfig, PRDPConfig,  # noqa: F401
                                          SPOConfig, TrajectoryPreferenceConfig)

CONFIGS = {"draft": DraftConfig, "grpo": GRPOConfig, "distill": DistillConfig, "dpo": DPOConfig, "kto": KTOConfig,
           "nft": NFTConfig, "soar": SoarConfig, "mapo": MaPOConfig, "d3po": D3POConfig, "prdp": PRDPConfig,
           "inpo": InPOConfig, "spo": SPOConfig}
