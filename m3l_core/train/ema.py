"""The mean teacher: an exponential moving average of the student (paper Eq. 11)."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn


def ema_decay(step: int, alpha: float = 0.99) -> float:
    """``a = min(1 - 1/(step+1), alpha)``: a plain copy at step 0, a running mean early, then capped."""
    return min(1.0 - 1.0 / (step + 1), alpha)


class EMATeacher:
    """``theta_t = a * theta_t + (1 - a) * theta_s`` over parameters AND buffers.

    Floating-point buffers (BatchNorm running statistics) are averaged like the
    parameters; integer buffers (``num_batches_tracked``) are copied. The
    teacher starts as a deep copy of the student, never needs gradients and
    always runs in eval mode (no dropout or drop-path; BatchNorm uses its
    running statistics).
    """

    def __init__(self, model: nn.Module, alpha: float = 0.99) -> None:
        model = getattr(model, "module", model)  # unwrap DDP
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self.alpha = alpha

    @torch.no_grad()
    def update(self, student: nn.Module, step: int) -> float:
        """Move the teacher towards ``student`` after optimizer step ``step`` (0-based); returns ``a``."""
        student = getattr(student, "module", student)
        a = ema_decay(step, self.alpha)
        t_state = self.module.state_dict(keep_vars=True)
        s_state = student.state_dict(keep_vars=True)
        if t_state.keys() != s_state.keys():
            raise ValueError("teacher and student have different parameters/buffers")
        for name, t in t_state.items():
            s = s_state[name].detach()
            if t.dtype.is_floating_point:
                t.data.mul_(a).add_(s.to(t.dtype), alpha=1.0 - a)
            else:
                t.data.copy_(s)
        return a

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state, strict=True)
