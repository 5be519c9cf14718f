"""Offline datasets: the HDF5 format, collection with behaviour policies and the window sampler.

The window sampler that yields ``[B, M, H, ...]`` batches of representative agents (:class:`TrajBatch`).
"""

from mfdiffuser.data.batch import TrajBatch

__all__ = ["TrajBatch"]
