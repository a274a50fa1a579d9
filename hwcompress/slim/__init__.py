"""Slimming a network: physical channel pruning (torch-pruning), unit removal, AMC's least-squares
reconstruction, and knowledge distillation to recover the accuracy.

(Not ``hwcompress.compress``: that name is the Python API's :func:`hwcompress.compress`.)
"""
