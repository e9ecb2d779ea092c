"""Real tables to try the project on: datasets scikit-learn ships, exported as a team's CSV would be.

    mlops example-data wine --out data/          # data/wine.csv
    mlops example-data breast_cancer --missing 0.05

Each export has an identifier column, the target with its real names where the dataset has
them (``malignant``/``benign``, ``class_0``..), column names in snake case, and no timestamp
(a snapshot, ingested with ``--as-of``). ``--missing`` blanks a share of the feature values and
of the labels at random (seeded), to see how the pipeline treats gaps. The shipped use cases
``include/breast_cancer``, ``include/diabetes`` and ``include/wine`` read these files.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class ExampleDataset:
    loader: str          # a scikit-learn ``load_*`` function (its data ships inside the package)
    entity: str
    target: str
    text_target: bool    # write the target's names (``malignant``) rather than its codes
    description: str


DATASETS = {
    "breast_cancer": ExampleDataset("load_breast_cancer", "patient_id", "diagnosis", True,
                                    "Wisconsin breast cancer diagnostics: is a tumour malignant (binary)"),
    "diabetes": ExampleDataset("load_diabetes", "patient_id", "progression", False,
                               "diabetes progression one year after baseline (regression)"),
    "wine": ExampleDataset("load_wine", "wine_id", "cultivar", True,
                           "which of three cultivars a wine comes from, by its chemistry (multiclass)"),
}


def snake_case(name: str) -> str:
    return re.sub(r"[^0-9a-zA-Z]+", "_", name).strip("_").lower()


def example_frame(name: str, missing: float = 0.0, seed: int = 0) -> pd.DataFrame:
    """The dataset ``name`` as one table: identifier, features, target."""
    import sklearn.datasets

    try:
        dataset = DATASETS[name]
    except KeyError:
        raise ValueError(f"no example dataset {name!r}; there are {sorted(DATASETS)}") from None
    options = {"scaled": False} if name == "diabetes" else {}   # the measurements as taken
    bunch = getattr(sklearn.datasets, dataset.loader)(as_frame=True, **options)
    features = bunch.data.rename(columns=snake_case)
    target = bunch.target
    if dataset.text_target:
        target = pd.Series(np.asarray(bunch.target_names)[target.to_numpy()], index=target.index)
    prefix = dataset.entity.split("_")[0][0]
    frame = pd.concat([pd.Series([f"{prefix}{i:05d}" for i in range(len(features))], name=dataset.entity),
                       features, target.rename(dataset.target)], axis=1)
    if missing:
        rng = np.random.default_rng(seed)
        for column in [*features.columns, dataset.target]:
            frame[column] = frame[column].astype(object).where(rng.random(len(frame)) >= missing, None)
    return frame


def export(name: str, out: Path, missing: float = 0.0) -> Path:
    """Write ``<out>/<name>.csv``; returns its path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.csv"
    example_frame(name, missing).to_csv(path, index=False)
    return path
