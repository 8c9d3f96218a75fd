#!/usr/bin/python3
"""Exports scikit-learn's bundled real datasets (no download) to the files WDML loads.

    /usr/bin/python3 scripts/datasets/sklearn_export.py OUT_DIR

Debian's Python: it has scikit-learn (`apt-get install python3-sklearn`); the pip one may
not. Writes, each with a stratified 80/20 train/test split, seed 31 (train_test_split's
random_state), so every run writes the same rows:

    OUT_DIR/digits.npz            x_train, y_train, x_test, y_test: 1,797 images 8x8 as
                                  float32 (n, 8, 8) of 0..16 (not uint8: WDML divides u8
                                  pixels by 255), labels uint8 0..9
    OUT_DIR/breast_cancer/{train,test}.csv   569 rows, 30 features, `label` 0/1
    OUT_DIR/wine/{train,test}.csv            178 rows, 13 features, `label` 0..2
"""
import csv
import os
import sys

import numpy as np
from sklearn.datasets import load_breast_cancer, load_digits, load_wine
from sklearn.model_selection import train_test_split

SEED = 31


def split(x, y):
    return train_test_split(x, y, test_size=0.2, random_state=SEED, stratify=y)


def write_csv(path, names, x, y):
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(list(names) + ["label"])
        for row, label in zip(x, y):
            out.writerow([repr(float(v)) for v in row] + [int(label)])


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)

    digits = load_digits()
    x = digits.images.astype(np.float32)
    x_train, x_test, y_train, y_test = split(x, digits.target.astype(np.uint8))
    np.savez_compressed(os.path.join(out, "digits.npz"),
                        x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)

    for name, load in [("breast_cancer", load_breast_cancer), ("wine", load_wine)]:
        data = load()
        x_train, x_test, y_train, y_test = split(data.data, data.target)
        os.makedirs(os.path.join(out, name), exist_ok=True)
        for part, xs, ys in [("train", x_train, y_train), ("test", x_test, y_test)]:
            write_csv(os.path.join(out, name, part + ".csv"), data.feature_names, xs, ys)
    print(f"wrote {out}: digits.npz, breast_cancer/, wine/ (seed {SEED})")


if __name__ == "__main__":
    main()
