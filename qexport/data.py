"""The data sets used offline: scikit-learn's bundled digits, and seeded synthetic images."""

from __future__ import annotations

import numpy as np

DIGITS_SHAPE = (1, 8, 8)


def digits_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): 8x8 images scaled to [-1, 1], a stratified 80/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images.astype(np.float32) / 8.0 - 1.0)[:, None]
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target.astype(np.int64), test_size=0.2, random_state=seed, stratify=digits.target
    )
    return x_train, y_train, x_test, y_test


def synthetic_images(shape: tuple[int, ...], count: int, seed: int = 0) -> np.ndarray:
    """Standard-normal float32 images (for equivalence and speed tests; no labels)."""
    return np.random.default_rng(seed).standard_normal((count, *shape), dtype=np.float32)


def verification_data(dataset: str, shape: tuple[int, ...], count: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Inputs (and labels when the data set has them) for ``qexport --verify``."""
    if dataset == "digits":
        _, _, x_test, y_test = digits_split()
        return x_test[:count], y_test[:count]
    return synthetic_images(shape, count, seed=1), None
