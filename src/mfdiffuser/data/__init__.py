"""Offline datasets: the episode record, the HDF5 format, collection with behaviour policies, and the
window sampler that yields ``[B, M, H, ...]`` batches of representative agents (:class:`TrajBatch`)."""

from mfdiffuser.data.batch import TrajBatch

__all__ = ["TrajBatch"]
