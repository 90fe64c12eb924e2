"""SLERP (Shoemake 1985) between a base tensor ``a`` (t = 0) and another ``b`` (t = 1), each tensor taken as one
vector: ``sin((1-t) theta)/sin(theta) a + sin(t theta)/sin(theta) b`` with ``cos(theta)`` the cosine between the
two; nearly (anti)parallel tensors (``|cos| > 0.9995``) fall back to linear interpolation (as mergekit 0.1.5)."""

from __future__ import annotations

import math

import torch

DOT_THRESHOLD = 0.9995
EPS = 1e-8


def slerp(t: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    dtype = torch.float64 if a.dtype == torch.float64 else torch.float32
    x, y = a.to(dtype), b.to(dtype)
    if x.numel() == 0:
        return x
    nx, ny = float(torch.linalg.vector_norm(x)), float(torch.linalg.vector_norm(y))
    nx, ny = (nx if nx > EPS else 1.0), (ny if ny > EPS else 1.0)
    cos = float(((x / nx) * (y / ny)).sum().clamp(-1, 1))
    if abs(cos) > DOT_THRESHOLD:
        return (1 - t) * x + t * y
    theta = math.acos(cos)
    return (math.sin((1 - t) * theta) / math.sin(theta)) * x + (math.sin(t * theta) / math.sin(theta)) * y
