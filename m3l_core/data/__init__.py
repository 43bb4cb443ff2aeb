"""Datasets: the folder format, the paper's datasets, and the synthetic RGB-D scene generator."""
