"""DSnoT (Zhang et al., 2024, "Dynamic Sparse No Training"): training-free prune-and-grow
refinement of any keep-mask.

For each output row, the expected reconstruction error of the pruned layer is
``delta = sum over pruned j of w_j * E[x_j]`` (dense output minus sparse output, in expectation).
Each cycle revives the pruned weight that moves ``delta`` towards zero the most (its contribution
``w_j E[x_j]`` has delta's sign; ranked by that contribution divided by Var[x_j], so features that
vary little, whose effect is mostly their mean, are preferred), then prunes a kept weight of
lowest Wanda score whose removal does not push ``delta`` away from zero. A row stops when
``delta`` changes sign, falls below ``threshold``, after ``max_cycles`` swaps, or when the next
swap would leave ``|delta|`` larger than before (a guard the paper does not have: every row's
expected error only decreases). The number of pruned weights per row never changes, and under N:M
the revived and the pruned weight lie in the same group of m, so the mask stays a valid N:M mask.
"""

import torch

from .patterns import parse_pattern


def dsnot(weight: torch.Tensor, keep: torch.Tensor, input_mean: torch.Tensor, input_var: torch.Tensor,
          input_norms: torch.Tensor, *, hessian: torch.Tensor | None = None, pattern=None, max_cycles: int = 50,
          threshold: float = 0.0, var_power: float = 1.0, name: str = "layer") -> torch.Tensor:
    """Refined keep-mask for ``weight`` (out_features, in_features) starting from ``keep``.

    ``input_mean``, ``input_var`` and ``input_norms`` are the mean, variance and L2 norm of each
    input feature over the calibration tokens. ``pattern`` (None, (n, m) or "n:m") is the mask's
    pattern, which the refined mask keeps. ``threshold`` is an absolute |delta| below which a row
    stops (the paper uses 0.1 on LLaMA-sized layers; it depends on the model's scale, so the
    default 0 relies on the other stopping rules). With ``hessian`` (H = 2/n sum x x^T of the
    layer's inputs), a swap is also taken only if it lowers the row's exact reconstruction error
    dw^T H dw on the calibration data: DSnoT's mean-based proposals can trade a smaller mean error
    for a larger variance error, and the guard makes the refinement never worse than its start.
    The weights are not changed: apply the mask.
    """
    rows, cols = weight.shape
    if keep.shape != weight.shape or keep.dtype != torch.bool:
        raise ValueError(f"dsnot({name}): keep must be a bool tensor of shape {tuple(weight.shape)}, "
                         f"but got {keep.dtype} {tuple(keep.shape)}")
    for label, stat in (("input_mean", input_mean), ("input_var", input_var), ("input_norms", input_norms)):
        if stat.shape != (cols,):
            raise ValueError(f"dsnot({name}): {label} must have shape ({cols},), but got {tuple(stat.shape)}")
    if max_cycles < 0:
        raise ValueError(f"dsnot({name}): max_cycles must be >= 0, but got {max_cycles}")
    nm = parse_pattern(pattern)
    group = nm[1] if nm is not None else cols
    if cols % group:
        raise ValueError(f"dsnot({name}): in_features {cols} is not a multiple of the pattern's m={group}")

    w = weight.detach().to(torch.float32)
    keep = keep.clone()
    contribution = w * input_mean.to(torch.float32).unsqueeze(0)  # w_j E[x_j]
    wanda_score = w.abs() * input_norms.to(torch.float32).unsqueeze(0)
    grow_rank = contribution / input_var.to(torch.float32).clamp_min(1e-12).pow(var_power).unsqueeze(0)
    delta = (contribution * ~keep).sum(dim=1)
    initial_sign = torch.sign(delta)
    active = delta.abs() > threshold
    row_index = torch.arange(rows, device=w.device)
    inf = torch.tensor(float("inf"), device=w.device)
    group_of = torch.arange(cols, device=w.device) // group
    if hessian is not None:
        if hessian.shape != (cols, cols):
            raise ValueError(f"dsnot({name}): hessian must have shape ({cols}, {cols}), but got {tuple(hessian.shape)}")
        hessian = hessian.to(device=w.device, dtype=torch.float32)
        # error_gradient[r] = H @ dw_r, kept current through the swaps (dw = pruned weights)
        error_gradient = (w * ~keep) @ hessian

    for _ in range(max_cycles):
        if not bool(active.any()):
            break
        # Grow: the pruned weight whose contribution has delta's sign and the largest ranked size.
        signed_rank = grow_rank * torch.sign(delta).unsqueeze(1)
        candidates = ~keep & (signed_rank > 0)
        grow_at = torch.where(candidates, signed_rank, -inf).argmax(dim=1)
        can_grow = candidates[row_index, grow_at] & active
        # Prune: a kept weight in the grown weight's group (the whole row when unstructured) of
        # lowest Wanda score, whose contribution does not have delta's sign after the growth.
        delta_after_grow = delta - contribution[row_index, grow_at]
        same_group = group_of.unsqueeze(0) == group_of[grow_at].unsqueeze(1)
        opposite = torch.sign(contribution) != torch.sign(delta_after_grow).unsqueeze(1)
        prunable = keep & same_group & opposite
        prune_at = torch.where(prunable, wanda_score, inf).argmin(dim=1)
        delta_after_swap = delta_after_grow + contribution[row_index, prune_at]
        # A swap that would overshoot to a larger |delta| is not taken (the row stops instead).
        swap = can_grow & prunable[row_index, prune_at] & (delta_after_swap.abs() < delta.abs())
        if hessian is not None:
            w_grow, w_prune = w[row_index, grow_at], w[row_index, prune_at]
            change = (-2 * w_grow * error_gradient[row_index, grow_at] + w_grow.square() * hessian[grow_at, grow_at]
                      + 2 * w_prune * error_gradient[row_index, prune_at]
                      + w_prune.square() * hessian[prune_at, prune_at]
                      - 2 * w_grow * w_prune * hessian[grow_at, prune_at])
            swap &= change < 0
        if not bool(swap.any()):
            break
        swap_rows = row_index[swap]
        keep[swap_rows, grow_at[swap]] = True
        keep[swap_rows, prune_at[swap]] = False
        delta = torch.where(swap, delta_after_swap, delta)
        if hessian is not None:
            error_gradient[swap_rows] += (w_prune[swap].unsqueeze(1) * hessian[prune_at[swap]]
                                          - w_grow[swap].unsqueeze(1) * hessian[grow_at[swap]])
        active = swap & (torch.sign(delta) == initial_sign) & (delta.abs() > threshold)
    return keep
