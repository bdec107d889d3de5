"""Offline preference optimisation (DPO family, KTO, RRHF): data, the reference and its cache, losses,
evaluation, the trainer and its config."""
