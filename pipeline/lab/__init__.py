"""Toy models of the project's seeds, run from the command line and written up in docs/SCIENCE.md.

- ``threshold``: the one-threshold model of "Gradient flows of loss functions" (seed 000) trained on
  the sharpness-controlled loss (``pipeline.losses.sharpness``).
- ``spiral``: the three-arm spiral of Ruiz-Garcia et al., ICML 2021 (seed 001), trained with the
  project's ``DynamicalLoss``.

``python -m pipeline.lab {threshold,spiral} --out results/lab`` writes CSV tables and PNG figures.
The lab uses ``losses`` only; nothing in the pipeline imports it, and it is outside the training
code version (editing a toy model retrains nothing).
"""
