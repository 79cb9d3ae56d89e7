"""Hyperparameter search: storage next to the catalog, trials as scheduler jobs, pruning, lineage per trial."""

from __future__ import annotations

from pathlib import Path

import pytest

from granary.models.errors import ModelError
from granary.models.hpo import SearchSpec, load_summary, search, storage_url
from tests.unit.models.conftest import Trained

pytest.importorskip("optuna", reason="search needs optuna (pip install 'granary[models]')")

BASE = {"vocab_size": 64, "d_model": 16, "n_layers": 1, "n_heads": 2, "context": 16}


def test_sqlite_study_lives_next_to_the_catalog(tmp_path: Path) -> None:
    url, kwargs = storage_url(f"sqlite:///{tmp_path}/catalog.db")
    assert url == f"sqlite:///{tmp_path}/catalog-optuna.db" and kwargs == {}
    with pytest.raises(ModelError, match="in-memory"):
        storage_url("sqlite://")


@pytest.mark.postgres
def test_postgres_study_lives_in_the_catalog_database(pg_url: str) -> None:
    import optuna

    from granary.models.hpo import open_storage

    url, kwargs = storage_url(pg_url)
    assert url == pg_url and kwargs["connect_args"]["options"] == "-csearch_path=optuna"
    study = optuna.create_study(study_name="pg", storage=open_storage(pg_url))
    study.optimize(lambda t: (t.suggest_float("x", -1, 1)) ** 2, n_trials=3)
    import sqlalchemy as sa

    engine = sa.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        n = conn.execute(sa.text("SELECT count(*) FROM optuna.trials")).scalar()
    engine.dispose()
    assert n == 3


def test_bad_specs_are_refused() -> None:
    with pytest.raises(ModelError, match="unknown parameter"):
        SearchSpec(data="d", heldout="h", space={"momentum": {"low": 0, "high": 1}})
    with pytest.raises(ModelError, match="unknown pruner"):
        SearchSpec(data="d", heldout="h", space={}, pruner="hyperband2")


@pytest.mark.slow
def test_trials_run_as_jobs_with_pruning_and_lineage(trained: Trained) -> None:
    store = trained.store()
    spec = SearchSpec(data=trained.data, heldout=trained.heldout, base=BASE, steps=12, report_every=4,
                      space={"lr": {"low": 1e-5, "high": 3e-2, "log": True}}, pruner="median", eval_samples=64)
    result = search(store, spec, study="t1", trials=4, workers=2)
    assert result["trials"] == 4 and result["failed_jobs"] == 0
    assert result["states"].get("complete", 0) + result["states"].get("pruned", 0) == 4
    best = result["best"]
    assert best is not None and 1e-5 <= best["params"]["lr"] <= 3e-2 and best["value"] < 4.2  # ln(64) = 4.16
    assert best["lineage"]["data"] == f"{trained.data}@{store.resolve(trained.data).id}"
    assert load_summary(store, "t1")["trials"] == 4
    with pytest.raises(ModelError, match="no study named"):
        load_summary(store, "nope")


@pytest.mark.slow
@pytest.mark.ray
def test_trials_run_as_ray_tasks(trained: Trained, ray_instance: None) -> None:
    store = trained.store()
    spec = SearchSpec(data=trained.data, heldout=trained.heldout, base=BASE, steps=8, report_every=4,
                      space={"lr": {"choices": [1e-3, 1e-2, 3e-2]}}, sampler="grid", pruner="none", eval_samples=32)
    result = search(store, spec, study="ray1", trials=3, workers=2, executor="ray")
    assert result["trials"] == 3 and result["failed_jobs"] == 0 and result["states"] == {"complete": 3}
    assert result["best"]["params"]["lr"] in (1e-3, 1e-2, 3e-2)


def test_a_trial_job_runs_trials_until_the_budget(trained: Trained) -> None:
    """One job (here in-process) runs trials back to back until the study holds the budget, then stops."""
    import optuna

    from granary.models.hpo import open_storage, run_trial

    store = trained.store()
    spec = SearchSpec(data=trained.data, heldout=trained.heldout, base=BASE, steps=4, report_every=2,
                      space={"lr": {"choices": [1e-3, 1e-2, 3e-2]}}, sampler="grid", pruner="none", eval_samples=16)
    url = store.settings.catalog_url
    optuna.create_study(study_name="budget", storage=open_storage(url), direction="minimize")
    assert run_trial(store, study="budget", storage=url, spec_json=spec.to_json(), budget=3) == 0
    assert run_trial(store, study="budget", storage=url, spec_json=spec.to_json(), budget=3) == 0  # nothing left
    result = load_summary(store, "budget")
    assert result["trials"] == 3 and result["states"] == {"complete": 3}
    st = optuna.load_study(study_name="budget", storage=open_storage(url))
    assert sorted(t.params["lr"] for t in st.trials) == [1e-3, 1e-2, 3e-2]  # each grid point once
    assert all(t.user_attrs["lineage"]["data"].startswith(trained.data) for t in st.trials)
