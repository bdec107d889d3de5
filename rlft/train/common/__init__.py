"""What every trainer shares: how a language-model trainer is called and opens (``launch``), what its loop
does around each step (``bookkeeping``: logging, evaluation, checkpoints, stopping), checkpoints, the
learning-rate schedule, the optimiser recipe and the data order, the epoch loop of the offline trainers,
signals and the non-finite policy, and the chat end-of-turn stop."""
