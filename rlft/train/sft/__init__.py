"""Supervised fine-tuning: the trainer and its config."""
