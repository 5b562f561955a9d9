"""Temperature scaling (Guo et al. 2017, https://arxiv.org/abs/1706.04599): one scalar T fitted on
validation logits so that softmax(logits / T) is calibrated; accuracy is unchanged."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T > 0 minimising validation NLL; optimised in log space so it stays positive."""
    logits, labels = logits.detach().float().clone(), labels.detach().long().clone()  # clone: may be inference tensors
    log_t = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))
