"""Online RL (the critic-free family and RLHF-PPO): config and presets, set-up, the rollout and its batch,
advantages, the update, the critic, PPO-ptx, evaluation, and the loop that runs them."""
