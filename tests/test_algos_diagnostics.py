"""Critic diagnostics: explained variance."""

import math

import torch
from numeric import close

from rlft.algos import explained_variance

T = torch.tensor


def test_explained_variance_example():
    close(explained_variance(T([1.0, 2.0, 2.0]), T([1.0, 2.0, 3.0]), T([1.0, 1.0, 1.0])), 2 / 3)


def test_explained_variance_perfect_constant_and_masked():
    target = T([[1.0, 2.0, 3.0, 100.0]])
    mask = T([[1.0, 1.0, 1.0, 0.0]])
    assert explained_variance(target, target, mask) == 1.0
    close(explained_variance(torch.full_like(target, 2.0), target, mask), 0.0)  # the masked 100 is ignored
    assert explained_variance(target, target, mask.bool()) == 1.0  # a boolean mask reads as 0/1


def test_explained_variance_is_nan_for_a_constant_target():
    assert math.isnan(explained_variance(T([0.0, 1.0]), T([1.0, 1.0]), T([1.0, 1.0])))
