"""Direct Preference Optimization's loss (Rafailov et al. 2023), twice: with autograd (`dpo_loss`, what the torch
twins train with) and with its backward written out (`DPOLoss`, what the custom models train with).

A batch holds pairs of sequences in consecutive rows: row 2p is prompt + the chosen reply, row 2p+1 prompt + the
rejected one. Targets are the next tokens, IGNORE_INDEX everywhere but the reply, so a row's log-probability is a
sum over the reply's tokens only:

    logp_i   = sum_t m_it log softmax(z_it)[y_it]                 (m_it = 1 on the reply's tokens, 0 elsewhere)
    h_p      = beta ((logp_w - ref_w) - (logp_l - ref_l))         (w = 2p, the chosen row; l = 2p+1, the rejected)
    L        = (1/P) sum_p -log sigmoid(h_p)                      (P pairs)
             + sft (1/N_w) sum_{chosen rows} sum_t -m_it log softmax(z_it)[y_it]     (optional: N_w chosen tokens)

ref_i is the same sum under the frozen reference model (the starting model), computed without gradients. beta sets
how far the policy may move from the reference; the SFT term on the chosen replies is a common stabiliser.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model_zoo.custom_layers import IGNORE_INDEX, at_least_float32


def sequence_log_probs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B,) sums of log p(target) over each row's scored targets (autograd)."""
    scored = targets != IGNORE_INDEX  # (B, T)
    log_probs = torch.log_softmax(at_least_float32(logits), dim=-1)  # (B, T, V)
    picked = log_probs.gather(-1, targets.masked_fill(~scored, 0).unsqueeze(-1)).squeeze(-1)  # (B, T)
    return (picked * scored).sum(-1)


def dpo_loss(logits: torch.Tensor, targets: torch.Tensor, reference: torch.Tensor, beta: float,
             sft: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, rewards, logp) with autograd: logits (2P, T, V), targets (2P, T), reference (2P,) log-prob sums.
    rewards (2P,) = beta * (log pi(y|x) - log pi_ref(y|x)) per row (TRL's rewards/chosen and rewards/rejected; the
    margin h is chosen's minus rejected's); logp (2P,) the policy's log-probabilities; both detached."""
    logp = sequence_log_probs(logits, targets)  # (2P,)
    ratio = logp - reference  # (2P,): log pi(y|x) - log pi_ref(y|x)
    h = beta * (ratio[0::2] - ratio[1::2])  # (P,)
    loss = F.softplus(-h).mean()  # -log sigmoid(h) = softplus(-h), without overflow
    if sft:
        chosen = targets[0::2]
        loss = loss - sft * logp[0::2].sum() / (chosen != IGNORE_INDEX).sum().clamp_min(1)
    return loss, (beta * ratio).detach(), logp.detach()


class DPOLoss:
    """The same loss with its backward by hand: forward(logits, targets, reference) keeps what backward needs."""

    def __init__(self, beta: float, sft: float = 0.0):
        self.beta, self.sft = beta, sft

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        self.targets, self.logits_dtype = targets, logits.dtype
        self.scored = targets != IGNORE_INDEX  # (2P, T)
        self.log_probs = torch.log_softmax(at_least_float32(logits), dim=-1)  # (2P, T, V)
        picked = self.log_probs.gather(-1, targets.masked_fill(~self.scored, 0).unsqueeze(-1)).squeeze(-1)
        logp = (picked * self.scored).sum(-1)  # (2P,)
        ratio = logp - reference
        self.h = self.beta * (ratio[0::2] - ratio[1::2])  # (P,)
        self.n_chosen = int(self.scored[0::2].sum())  # N_w
        loss = F.softplus(-self.h).mean()
        if self.sft:
            loss = loss - self.sft * logp[0::2].sum() / max(self.n_chosen, 1)
        return loss

    def backward(self, loss_scale: float = 1.0) -> torch.Tensor:
        """d loss / d logits (2P, T, V); loss_scale multiplies the loss first.

        d(-log sigmoid(h))/dh = -sigmoid(-h), so with the mean over P pairs dL/dh_p = -sigmoid(-h_p) / P, and
        dL/dlogp_w = beta dL/dh_p, dL/dlogp_l = -beta dL/dh_p (the chosen row pulled up, the rejected pushed down).
        A row's logp is a sum of log softmax(z_t)[y_t] over its scored tokens, whose derivative in z_t is
        onehot(y_t) - softmax(z_t); so dz_t = g_row m_t (onehot(y_t) - softmax(z_t)), g_row = dL/dlogp_row. The SFT
        term adds -sft / N_w to g of every chosen row.
        """
        P = self.h.shape[0]
        d_h = -torch.sigmoid(-self.h) / P  # (P,)
        g = torch.empty(2 * P, device=self.h.device)  # (2P,): dL / dlogp per row
        g[0::2], g[1::2] = self.beta * d_h, -self.beta * d_h
        if self.sft:
            g[0::2] -= self.sft / max(self.n_chosen, 1)
        d_logits = -self.log_probs.exp()  # (2P, T, V): -softmax(z)
        d_logits.scatter_add_(-1, self.targets.masked_fill(~self.scored, 0).unsqueeze(-1),
                              torch.ones_like(d_logits[..., :1]))  # + onehot(y)
        d_logits.mul_((self.scored * (loss_scale * g)[:, None]).unsqueeze(-1))  # m_t g_row, unscored: 0
        return d_logits.to(self.logits_dtype)
