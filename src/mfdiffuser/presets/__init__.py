"""Packaged experiment-grid presets (``demo.yaml``: the quick end-to-end pipeline run by ``mfd demo``)."""
