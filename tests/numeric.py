"""Shared assertion for the worked-example tests: values equal to the reference numbers within 1e-5."""

import torch


def close(a, b, tol=1e-5):
    torch.testing.assert_close(
        torch.as_tensor(a, dtype=torch.float64).detach(),
        torch.as_tensor(b, dtype=torch.float64),
        atol=tol,
        rtol=0,
    )
