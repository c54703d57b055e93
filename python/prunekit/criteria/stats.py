"""What a criterion sees of a layer: the statistics it declared in ``needs``, nothing else."""

from __future__ import annotations

import torch


class LayerStats:
    """The statistics of one layer, as declared in a criterion's ``needs``.

    - ``input_norms``: (in,) ||X_j||_2 over all calibration tokens of the layer's inputs;
    - ``input_mean``, ``input_var``: (in,) mean and variance of every input feature;
    - ``hessian``: (in, in) H = 2/n X^T X of the inputs (fp32);
    - ``gradients``: (out, in) ||G||, the L2 norm over calibration items of the loss gradient of
      each weight (PruneConfig.loss_fn; by default the model's language-model loss);
    - ``generator``: a torch.Generator seeded by PruneConfig.seed, shared by the layers in order.

    Reading a statistic the criterion did not declare raises ValueError: an undeclared statistic
    may not have been gathered (a data-free run has no inputs, gradients need their own pass).
    """

    def __init__(self, needs: frozenset[str], *, criterion: str, layer: str, inputs=None,
                 gradients: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 device: torch.device | None = None):
        self._needs = needs
        self._criterion = criterion
        self._layer = layer
        self._inputs = inputs  # prunekit.calibrate.LayerInputStats, or None without calibration data
        self._gradients = gradients
        self._generator = generator
        self._device = device

    def _need(self, what: str, value):
        if what not in self._needs:
            raise ValueError(f"criterion {self._criterion!r} ({self._layer}): stats.{what}: expected {what!r} in the "
                             f"criterion's declared needs, but they are {sorted(self._needs)}; declare it")
        if value is None:
            raise ValueError(f"criterion {self._criterion!r} ({self._layer}): stats.{what}: expected calibration "
                             "data, but prune got calib=None")
        return value

    def _input(self, what: str) -> torch.Tensor:
        return getattr(self._need(what, self._inputs), what)

    @property
    def input_norms(self) -> torch.Tensor:
        return self._input("input_norms")

    @property
    def input_mean(self) -> torch.Tensor:
        return self._input("input_mean")

    @property
    def input_var(self) -> torch.Tensor:
        return self._input("input_var")

    @property
    def hessian(self) -> torch.Tensor:
        return self._input("hessian")

    def inverse_hessian_factor(self, percdamp: float) -> torch.Tensor:
        """SparseGPT's damped inverse-Hessian factor of ``hessian``
        (:func:`prunekit.solvers.inverse_hessian_factor`), computed once for the layers that read
        the same input (q/k/v, gate/up) where the statistics are shared."""
        inputs = self._need("hessian", self._inputs)
        if hasattr(inputs, "inverse_hessian_factor"):
            return inputs.inverse_hessian_factor(percdamp, self._layer)
        from ..solvers.sparsegpt import inverse_hessian_factor
        return inverse_hessian_factor(self.hessian, percdamp=percdamp, name=self._layer)

    @property
    def gradients(self) -> torch.Tensor:
        gradients = self._need("gradients", self._gradients)
        return gradients.to(self._device) if self._device is not None else gradients

    @property
    def generator(self) -> torch.Generator:
        return self._need("generator", self._generator)
