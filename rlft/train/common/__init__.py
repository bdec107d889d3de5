"""What every trainer shares: checkpoints, the learning-rate schedule, the optimiser recipe and the data
order, the epoch loop of the offline trainers, signals and the non-finite policy, and the chat end-of-turn
stop."""
