"""Preprocessing of Cell Painting profiles: cleaning, normalisation, transforms and feature selection."""

__all__: list[str] = []
