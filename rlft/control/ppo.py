"""PPO-clip on gymnasium, read top to bottom like the algorithm box (Schulman et al., arXiv 1707.06347).

Every piece of math comes from `rlft.algos`: `gae` for advantages and returns, `masked_whiten` for
advantage normalisation, `ppo_clip_loss`, `value_loss`, `entropy_bonus`.

Time-limit truncation: a truncated episode did not end, so its last reward is bootstrapped with
γ·V(final observation) and the step is then treated as an episode end (SB3's approach). With next-step
autoreset the final observation is exactly the next stored observation, so V of it is already computed.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from rlft.algos import entropy_bonus, gae, masked_mean, masked_whiten, ppo_clip_loss, value_loss
from rlft.run import MetricsWriter, Progress, RunDir, seed_everything

from .config import CONTROL_ALGOS, ControlConfig
from .envs import action_info, make_vec_env
from .policies import ActorCritic
from .saving import save_policy


@dataclass
class TrainResult:
    steps: int
    episodes: int
    mean_return: float  # over the last `return_window` episodes
    seconds: float
    solved_at_step: int | None  # first step where the windowed mean reached target_return


def explained_variance(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    """1 − Var[target − pred] / Var[target]: 1 is a perfect critic, ≤ 0 no better than a constant."""
    var = masked_mean((target - masked_mean(target, mask)) ** 2, mask)
    resid = target - pred
    var_resid = masked_mean((resid - masked_mean(resid, mask)) ** 2, mask)
    return float("nan") if var == 0 else float(1 - var_resid / var)


@CONTROL_ALGOS.register("ppo")
def train_ppo(cfg: ControlConfig, run: RunDir, show_progress: bool = True) -> TrainResult:
    p = cfg.ppo
    torch.set_num_threads(cfg.torch_threads)
    seed_everything(cfg.seed)
    envs = make_vec_env(cfg.env, cfg.num_envs, cfg.seed)
    discrete, act_dim = action_info(envs.single_action_space)
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    policy = ActorCritic(obs_dim, act_dim, discrete, cfg.hidden)
    optimizer = torch.optim.Adam(policy.parameters(), lr=p.lr, eps=p.adam_eps)

    N, T = cfg.num_envs, p.n_steps
    batch = N * T
    minibatch = batch // p.minibatches
    num_updates = max(1, cfg.total_steps // batch)
    act_shape = () if discrete else (act_dim,)
    obs_buf = torch.zeros(T, N, obs_dim)
    act_buf = torch.zeros(T, N, *act_shape)
    logp_buf, val_buf, rew_buf = torch.zeros(T, N), torch.zeros(T, N), torch.zeros(T, N)
    term_buf, trunc_buf, valid_buf = torch.zeros(T, N), torch.zeros(T, N), torch.zeros(T, N)
    if not discrete:
        low, high = envs.single_action_space.low, envs.single_action_space.high

    obs = torch.as_tensor(envs.reset(seed=cfg.seed)[0], dtype=torch.float32).reshape(N, obs_dim)
    prev_done = np.zeros(N, dtype=bool)
    ep_return, ep_length = np.zeros(N), np.zeros(N, dtype=np.int64)
    recent: deque[float] = deque(maxlen=cfg.return_window)
    episodes, step, solved_at = 0, 0, None
    start = time.perf_counter()
    metrics = MetricsWriter(run.root)
    progress = Progress(num_updates * batch, desc=f"ppo {cfg.env}", unit="step", enabled=show_progress)

    for update in range(num_updates):
        frac = 1.0 - update / num_updates  # linear annealing to 0
        optimizer.param_groups[0]["lr"] = p.lr * frac if p.anneal_lr else p.lr
        clip = p.clip * frac if p.anneal_clip else p.clip
        finished: list[tuple[float, int]] = []

        # 1. Roll out T steps in each of the N environments with the current policy.
        for t in range(T):
            actions, logp, values = policy.act(obs)
            obs_buf[t], act_buf[t], logp_buf[t], val_buf[t] = obs, actions, logp, values
            # With next-step autoreset, the step after a done only resets: not a real transition.
            valid_buf[t] = torch.from_numpy(~prev_done)
            env_actions = actions.numpy() if discrete else np.clip(actions.numpy(), low, high)
            next_obs, reward, terminated, truncated, _ = envs.step(env_actions)
            rew_buf[t] = torch.from_numpy(np.asarray(reward, dtype=np.float32))
            term_buf[t] = torch.from_numpy(terminated.astype(np.float32))
            trunc_buf[t] = torch.from_numpy(truncated.astype(np.float32))
            ep_return += reward * ~prev_done
            ep_length += ~prev_done
            prev_done = terminated | truncated
            for i in np.flatnonzero(prev_done):
                finished.append((float(ep_return[i]), int(ep_length[i])))
                ep_return[i], ep_length[i] = 0.0, 0
            obs = torch.as_tensor(next_obs, dtype=torch.float32).reshape(N, obs_dim)
        step += batch

        # 2. Advantages: GAE over time, per environment (rlft.algos puts time on the last dimension).
        with torch.no_grad():
            last_value = policy.value(obs)
        next_values = torch.cat([val_buf[1:], last_value[None]])
        rewards = rew_buf + p.gamma * next_values * (trunc_buf * (1 - term_buf))
        dones = torch.clamp(term_buf + trunc_buf, max=1.0)
        adv, returns = gae(
            rewards.T, val_buf.T, p.gamma, p.lam, mask=valid_buf.T, dones=dones.T, bootstrap=last_value
        )
        b_adv, b_ret = adv.T.reshape(batch), returns.T.reshape(batch)
        b_obs, b_act = obs_buf.reshape(batch, obs_dim), act_buf.reshape(batch, *act_shape)
        b_logp, b_val, b_valid = logp_buf.reshape(batch), val_buf.reshape(batch), valid_buf.reshape(batch)

        # 3. Several epochs of minibatch updates on the clipped surrogate.
        stats: dict[str, float] = {}
        for _epoch in range(p.epochs):
            order = torch.randperm(batch)
            for start_i in range(0, batch, minibatch):
                idx = order[start_i : start_i + minibatch]
                mask = b_valid[idx]
                new_logp, entropy, new_value = policy.evaluate(b_obs[idx], b_act[idx])
                mb_adv = masked_whiten(b_adv[idx], mask, eps=1e-8) if p.norm_adv else b_adv[idx]
                pg_loss, info = ppo_clip_loss(new_logp, b_logp[idx], mb_adv, mask, clip_low=clip)
                v_loss, v_info = value_loss(new_value, b_val[idx], b_ret[idx], mask, clip=p.vf_clip)
                ent = -entropy_bonus(entropy, mask)
                loss = pg_loss + p.vf_coef * v_loss - p.ent_coef * ent
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(policy.parameters(), p.max_grad_norm)
                optimizer.step()
            if p.target_kl is not None and info["approx_kl"] > p.target_kl:
                break

        # 4. Log.
        recent.extend(ret for ret, _ in finished)
        episodes += len(finished)
        window_mean = float(np.mean(recent)) if recent else float("nan")
        window_full = len(recent) == recent.maxlen
        if (
            solved_at is None
            and cfg.target_return is not None
            and window_full
            and window_mean >= cfg.target_return
        ):
            solved_at = step
        elapsed = time.perf_counter() - start
        stats = {
            "episodes": episodes,
            "return_mean_window": window_mean,
            "pg_loss": pg_loss.item(),
            "value_loss": v_loss.item(),
            "entropy": ent.item(),
            "approx_kl": float(info["approx_kl"]),
            "clipfrac": float(info["clipfrac_low"] + info["clipfrac_high"]),
            "vf_clipfrac": float(v_info["vf_clipfrac"]),
            "explained_variance": explained_variance(b_val, b_ret, b_valid),
            "lr": optimizer.param_groups[0]["lr"],
            "steps_per_second": step / elapsed,
        }
        if finished:
            stats["episode_return"] = float(np.mean([r for r, _ in finished]))
            stats["episode_length"] = float(np.mean([n for _, n in finished]))
        metrics.log(step, stats)
        progress.update(batch, ret=window_mean, kl=stats["approx_kl"])
        if solved_at is not None:
            break

    progress.close()
    metrics.close()
    envs.close()
    if cfg.save_policy:
        save_policy(policy, run.root / "policy.safetensors", cfg)
    return TrainResult(
        step,
        episodes,
        float(np.mean(recent)) if recent else float("nan"),
        time.perf_counter() - start,
        solved_at,
    )
