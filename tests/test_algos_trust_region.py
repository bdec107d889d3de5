"""TRPO's conjugate gradient, step scaling and line search; exact KLs for PPO-penalty and TRPO."""

import math

import torch
from numeric import close

from rlft.algos import (
    backtracking_line_search,
    categorical_kl,
    conjugate_gradient,
    gaussian_kl,
    trust_region_step,
)

T = torch.tensor


def test_trpo_worked_example():
    F = torch.diag(T([2.0, 1.0]))
    x = conjugate_gradient(lambda v: F @ v, T([1.0, 0.0]))
    close(x, [0.5, 0.0])
    close(x @ F @ x, 0.5)
    step = trust_region_step(x, F @ x, max_kl=0.01)
    close(step, [0.1, 0.0])
    close(0.5 * step @ F @ step, 0.01)


def test_conjugate_gradient_solves_spd_system():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, generator=g, dtype=torch.float64)
    F = a @ a.T + 0.1 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    x = conjugate_gradient(lambda v: F @ v, b, iters=50)
    close(F @ x, b, 1e-8)
    assert trust_region_step(torch.zeros(2), torch.zeros(2), 0.01).abs().sum() == 0


def test_line_search_backtracks_until_kl_and_improvement_hold():
    full = T([1.0])
    # surrogate improves for any positive step; KL = step² must be ≤ 0.25 ⇒ 0.8^k ≤ 0.5 ⇒ k = 4
    step, k = backtracking_line_search(lambda s: (float(s), float(s) ** 2), full, 0.25, baseline=0.0)
    assert k == 4
    close(step, [0.8**4])
    step, k = backtracking_line_search(lambda s: (-1.0, 0.0), full, 0.25, baseline=0.0)
    assert k == -1 and step.item() == 0.0


def test_exact_kls():
    p, q = T([[0.0, math.log(3.0)]]), T([[0.0, 0.0]])  # p = [0.25, 0.75], q = [0.5, 0.5]
    close(categorical_kl(p, q), [0.25 * math.log(0.5) + 0.75 * math.log(1.5)])
    close(categorical_kl(q, q), [0.0])
    close(gaussian_kl(T([[0.1]]), T([[0.0]]), T([[0.0]]), T([[0.0]])), [0.005])  # Schulman's N(0.1,1)‖N(0,1)
    close(gaussian_kl(T([[0.0]]), T([[math.log(2.0)]]), T([[0.0]]), T([[0.0]])), [math.log(0.5) + 2.0 - 0.5])


def test_ppo_penalty_loss_value_and_gradient():
    from rlft.algos import ppo_penalty_loss

    logp = torch.tensor([[math.log(1.5)]], requires_grad=True)
    out, _ = ppo_penalty_loss(logp, torch.zeros(1, 1), T([[1.0]]), torch.ones(1, 1), kl=T([[0.2]]), beta=0.5)
    close(out.detach(), -1.5 + 0.1)
    out.backward()
    close(logp.grad, [[-1.5]])  # no clipping: the gradient flows at any ratio
    logp2 = torch.tensor([[math.log(1.5)]], requires_grad=True)
    est, _ = ppo_penalty_loss(logp2, torch.zeros(1, 1), T([[0.0]]), torch.ones(1, 1), beta=1.0)
    close(est.detach(), 0.5 - math.log(1.5))  # sample estimate (r − 1) − log r
