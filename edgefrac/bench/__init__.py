"""Latency, memory and accuracy-drift measurements of a model on the machine that runs it.

Device side: numpy, the standard library and a TFLite interpreter only.
Plots in ``report`` import matplotlib (the ``bench`` extra) when called.
"""
