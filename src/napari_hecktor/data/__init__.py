"""Synthetic multi-centre FDG-PET/CT cohorts and the clinical table schema."""
