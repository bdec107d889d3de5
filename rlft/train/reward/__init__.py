"""The reward-model trainer: data, losses, evaluation, the trainer and its config."""
