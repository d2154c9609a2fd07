"""Write a small but complete Kedro project in the style of Kedro's spaceflights tutorial.

``write_project(root, package)`` makes ``root`` a Kedro project (``pyproject.toml`` with
``[tool.kedro]``, ``settings.py``, ``pipeline_registry.py``, ``conf/base`` with a catalog of
CSV and pickle datasets and ``parameters.yml``) whose data it generates: companies and
shuttles -> preprocessing -> a model input table -> split -> train -> evaluate, with pandas
and scikit-learn and ``params:`` inputs. A hook appends every node run to the file named by
``NODE_RUNS_LOG``. ``register_pipelines`` has ``__default__``, ``data_processing`` and
``namespaced`` (the data-science part as a modular pipeline under the namespace
``candidate``, with its own parameters).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import kedro
import numpy as np

EEIPU_YML = """\
objective: metrics
metric: r2_score
direction: maximize
space:
  params:preprocessing.price_quantile: {type: float, low: 0.8, high: 1.0}
  params:model_options.alpha: {type: float, low: 0.001, high: 100.0, log: true}
  params:model_options.degree: {type: int, low: 1, high: 3}
"""

PARAMETERS_YML = """\
preprocessing:
  price_quantile: 0.95
split_options:
  test_size: 0.25
  random_state: 3
  features: [engines, passenger_capacity, crew, d_check_complete, moon_clearance_complete,
             iata_approved, company_rating]
model_options:
  alpha: 1.0
  degree: 1
candidate:
  split_options:
    test_size: 0.3
    random_state: 5
    features: [engines, passenger_capacity, crew, company_rating]
  model_options:
    alpha: 1.0
    degree: 2
"""

CATALOG_YML = """\
companies:
  type: pandas.CSVDataset
  filepath: data/01_raw/companies.csv
shuttles:
  type: pandas.CSVDataset
  filepath: data/01_raw/shuttles.csv
preprocessed_shuttles:
  type: pandas.CSVDataset
  filepath: data/02_intermediate/preprocessed_shuttles.csv
model_input_table:
  type: pandas.CSVDataset
  filepath: data/03_primary/model_input_table.csv
regressor:
  type: pickle.PickleDataset
  filepath: data/06_models/regressor.pickle
metrics:
  type: pickle.PickleDataset
  filepath: data/08_reporting/metrics.pickle
candidate.metrics:
  type: pickle.PickleDataset
  filepath: data/08_reporting/candidate_metrics.pickle
"""

NODES_DP = '''\
"""Data processing: clean the raw tables and join them into the model input table."""

import pandas as pd


def _is_true(x: pd.Series) -> pd.Series:
    return x == "t"


def _parse_percentage(x: pd.Series) -> pd.Series:
    return x.str.replace("%", "").astype(float) / 100


def _parse_money(x: pd.Series) -> pd.Series:
    return x.str.replace("$", "").str.replace(",", "").astype(float)


def preprocess_companies(companies: pd.DataFrame) -> pd.DataFrame:
    companies = companies.copy()
    companies["iata_approved"] = _is_true(companies["iata_approved"])
    companies["company_rating"] = _parse_percentage(companies["company_rating"])
    return companies


def preprocess_shuttles(shuttles: pd.DataFrame, preprocessing: dict) -> pd.DataFrame:
    shuttles = shuttles.copy()
    shuttles["d_check_complete"] = _is_true(shuttles["d_check_complete"])
    shuttles["moon_clearance_complete"] = _is_true(shuttles["moon_clearance_complete"])
    shuttles["price"] = _parse_money(shuttles["price"])
    cap = shuttles["price"].quantile(preprocessing["price_quantile"])
    return shuttles[shuttles["price"] <= cap]


def create_model_input_table(
    shuttles: pd.DataFrame, companies: pd.DataFrame
) -> pd.DataFrame:
    table = shuttles.merge(companies, left_on="company_id", right_on="id")
    return table.dropna()
'''

PIPELINE_DP = """\
from kedro.pipeline import Pipeline, node

from .nodes import create_model_input_table, preprocess_companies, preprocess_shuttles


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(preprocess_companies, "companies", "preprocessed_companies",
                 name="preprocess_companies_node"),
            node(preprocess_shuttles, ["shuttles", "params:preprocessing"],
                 "preprocessed_shuttles", name="preprocess_shuttles_node"),
            node(create_model_input_table, ["preprocessed_shuttles", "preprocessed_companies"],
                 "model_input_table", name="create_model_input_table_node"),
        ]
    )
"""

NODES_DS = '''\
"""Data science: split, fit a polynomial ridge regression of the price, score it."""

import pandas as pd
from sklearn.linear_model import Ridge
from sklearn.metrics import mean_absolute_error, r2_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import PolynomialFeatures, StandardScaler


def split_data(data: pd.DataFrame, split_options: dict) -> tuple:
    X = data[split_options["features"]].astype(float)
    y = data["price"]
    return train_test_split(
        X, y, test_size=split_options["test_size"], random_state=split_options["random_state"]
    )


def train_model(X_train: pd.DataFrame, y_train: pd.Series, model_options: dict):
    model = make_pipeline(
        StandardScaler(), PolynomialFeatures(model_options["degree"]),
        Ridge(alpha=model_options["alpha"]),
    )
    return model.fit(X_train, y_train)


def evaluate_model(regressor, X_test: pd.DataFrame, y_test: pd.Series) -> dict:
    predicted = regressor.predict(X_test)
    return {
        "r2_score": float(r2_score(y_test, predicted)),
        "mae": float(mean_absolute_error(y_test, predicted)),
    }
'''

PIPELINE_DS = '''\
from kedro.pipeline import Pipeline, node

from .nodes import evaluate_model, split_data, train_model


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                split_data,
                ["model_input_table", "params:split_options"],
                ["X_train", "X_test", "y_train", "y_test"],
                name="split_data_node",
            ),
            node(
                train_model,
                ["X_train", "y_train", "params:model_options"],
                "regressor",
                name="train_model_node",
            ),
            node(
                evaluate_model,
                ["regressor", "X_test", "y_test"],
                "metrics",
                name="evaluate_model_node",
            ),
        ]
    )


def create_namespaced(**kwargs) -> Pipeline:
    """The same nodes as a modular pipeline: datasets and parameters under `candidate.`."""
    return Pipeline(create_pipeline(), namespace="candidate", inputs={"model_input_table"})
'''

REGISTRY = """\
from kedro.pipeline import Pipeline

from {package}.pipelines import data_processing, data_science


def register_pipelines() -> dict[str, Pipeline]:
    dp = data_processing.create_pipeline()
    return {{
        "__default__": dp + data_science.create_pipeline(),
        "data_processing": dp,
        "namespaced": dp + data_science.create_namespaced(),
    }}
"""

HOOKS = '''\
import os

from kedro.framework.hooks import hook_impl


class NodeRunCounter:
    """Append each node run's name to the file $NODE_RUNS_LOG names."""

    @hook_impl
    def after_node_run(self, node):
        path = os.environ.get("NODE_RUNS_LOG")
        if path:
            with open(path, "a") as log:
                log.write(node.name + "\\n")
'''

SETTINGS = """\
from {package}.hooks import NodeRunCounter

HOOKS = (NodeRunCounter(),)
"""


def write_data(root: Path, n: int = 1500, seed: int = 0) -> None:
    """Generate ``data/01_raw/companies.csv`` and ``shuttles.csv`` (formatted like the
    tutorial's: ratings as percentages, prices as dollars, booleans as ``t``/``f``)."""
    rng = np.random.default_rng(seed)
    raw = root / "data" / "01_raw"
    raw.mkdir(parents=True, exist_ok=True)
    n_companies = 60
    rating = rng.uniform(0.3, 1.0, n_companies)
    iata = rng.random(n_companies) < 0.5
    lines = ["id,company_rating,iata_approved"]
    lines += [
        f"{i},{r * 100:.0f}%,{'t' if a else 'f'}"
        for i, (r, a) in enumerate(zip(rating, iata, strict=True))
    ]
    (raw / "companies.csv").write_text("\n".join(lines) + "\n")
    company = rng.integers(0, n_companies, n)
    engines = rng.integers(1, 5, n)
    capacity = rng.integers(2, 12, n)
    crew = rng.integers(1, 6, n)
    d_check = rng.random(n) < 0.6
    moon = rng.random(n) < 0.4
    r = np.round(rating[company], 2)
    price = (
        800
        + 120 * engines
        + 25 * capacity**1.5
        + 300 * r * engines
        + 150 * d_check
        + 90 * moon * crew
        + 200 * iata[company]
        + rng.normal(0, 60, n)
    )
    price[rng.random(n) < 0.03] *= 8  # outliers: what `price_quantile` is for
    lines = [
        "id,company_id,engines,passenger_capacity,crew,d_check_complete,"
        "moon_clearance_complete,price"
    ]
    lines += [
        f'{i},{c},{e},{p},{w},{"t" if d else "f"},{"t" if m else "f"},"${v:,.2f}"'
        for i, (c, e, p, w, d, m, v) in enumerate(
            zip(company, engines, capacity, crew, d_check, moon, price, strict=True)
        )
    ]
    (raw / "shuttles.csv").write_text("\n".join(lines) + "\n")


def write_project(root: Path, package: str, *, eeipu_yml: str = EEIPU_YML) -> Path:
    """Write the project into ``root`` (created); returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""\
            [build-system]
            requires = ["setuptools"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "{package}"
            version = "0.1"
            requires-python = ">=3.10"

            [tool.kedro]
            package_name = "{package}"
            project_name = "{package}"
            kedro_init_version = "{kedro.__version__}"
            tools = []
            example_pipeline = "False"
            source_dir = "src"
            """
        )
    )
    conf = root / "conf"
    (conf / "base").mkdir(parents=True, exist_ok=True)
    (conf / "local").mkdir(exist_ok=True)
    (conf / "base" / "catalog.yml").write_text(CATALOG_YML)
    (conf / "base" / "parameters.yml").write_text(PARAMETERS_YML)
    if eeipu_yml:
        (conf / "base" / "eeipu.yml").write_text(eeipu_yml)
    src = root / "src" / package
    for part in ("data_processing", "data_science"):
        (src / "pipelines" / part).mkdir(parents=True, exist_ok=True)
    (src / "__init__.py").write_text("")
    (src / "pipelines" / "__init__.py").write_text("")
    (src / "settings.py").write_text(SETTINGS.format(package=package))
    (src / "hooks.py").write_text(HOOKS)
    (src / "pipeline_registry.py").write_text(REGISTRY.format(package=package))
    for part, nodes, pipeline in (
        ("data_processing", NODES_DP, PIPELINE_DP),
        ("data_science", NODES_DS, PIPELINE_DS),
    ):
        (src / "pipelines" / part / "__init__.py").write_text(
            "from .pipeline import create_pipeline  # noqa: F401\n"
            + (
                "from .pipeline import create_namespaced  # noqa: F401\n"
                if part == "data_science"
                else ""
            )
        )
        (src / "pipelines" / part / "nodes.py").write_text(nodes)
        (src / "pipelines" / part / "pipeline.py").write_text(pipeline)
    write_data(root)
    return root
