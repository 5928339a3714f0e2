"""Triton kernels of infinidepth, installed as ``infinidepth.kernels``.

They run on the GPU, and on the CPU under ``TRITON_INTERPRET=1`` (how CI tests them).
"""
