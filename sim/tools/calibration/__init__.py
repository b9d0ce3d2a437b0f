"""Fitting engine profiles to step-time measurements and links to nccl-tests logs."""
