"""Segmentation: preprocessing, inference, post-processing and CRF refinement."""
