"""Metrics with confidence intervals, computed once from predictions and written to metrics.json.

``stats`` (Wilson and bootstrap intervals, JSON helpers), ``classification`` and ``segmentation``.
"""
