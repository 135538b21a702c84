"""Shared fixtures. Tests use the real models built by `storyline models build`."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("STORYLINE_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """The built models (default: <repo>/data/models, as `make models` builds them)."""
    path = Path(os.environ.get("STORYLINE_TEST_MODELS_DIR", ROOT / "data" / "models"))
    if not (path / "manifest.json").exists():
        pytest.fail(f"models are not built in {path}: run `make models` first")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "allsides" / "articles.jsonl").exists():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def embedder(models_dir: Path):  # type: ignore[no-untyped-def]
    from storyline.models.embedder import OnnxEmbedder

    return OnnxEmbedder(models_dir)


@pytest.fixture()
def data_dir(tmp_path: Path, models_dir: Path) -> Path:
    """An empty data dir whose models/ points at the built models."""
    d = tmp_path / "data"
    d.mkdir()
    (d / "models").symlink_to(models_dir, target_is_directory=True)
    return d


# -- store backends ----------------------------------------------------------------------
# Tests marked ``both_backends`` that use the ``backend`` fixture (directly or through
# ``make_store``, ``database_url`` or ``pipeline``) run once per backend; PostgreSQL needs
# STORYLINE_TEST_DATABASE_URL (e.g. from `eval "$(.ci/pg start)"`) and skips without it.
# Every other test gets SQLite.
BACKENDS = ("sqlite", "postgres")
PG_URL_ENV = "STORYLINE_TEST_DATABASE_URL"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"both_backends: run against SQLite and PostgreSQL (${PG_URL_ENV})"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames and metafunc.definition.get_closest_marker(
        "both_backends"
    ):
        metafunc.parametrize("backend", BACKENDS, indirect=True)


@pytest.fixture()
def backend(request: pytest.FixtureRequest) -> str:
    return str(getattr(request, "param", "sqlite"))


class PgDatabases:
    """Fresh, empty databases on the test cluster, dropped when the test ends."""

    def __init__(self, url: str) -> None:
        import sqlalchemy as sa

        from storyline.index.pg import normalise_url

        self._sa = sa
        self.base = normalise_url(url)
        self._admin = sa.create_engine(self.base, isolation_level="AUTOCOMMIT")
        self.names: list[str] = []

    def create(self) -> str:
        import uuid

        name = f"t_{uuid.uuid4().hex}"
        with self._admin.connect() as conn:
            conn.execute(self._sa.text(f'CREATE DATABASE "{name}"'))
        self.names.append(name)
        return self.base.set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        with self._admin.connect() as conn:
            for name in self.names:
                conn.execute(self._sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.names.clear()
        self._admin.dispose()


@pytest.fixture()
def pg_databases():  # type: ignore[no-untyped-def]
    """Creates empty PostgreSQL databases for this test (skips without a test cluster)."""
    url = os.environ.get(PG_URL_ENV)
    if not url:
        pytest.skip(f"PostgreSQL tests need ${PG_URL_ENV} (start one: eval \"$(.ci/pg start)\")")
    try:
        import alembic  # noqa: F401
        import psycopg  # noqa: F401
        import sqlalchemy  # noqa: F401
    except ImportError:
        pytest.skip("PostgreSQL tests need the postgres extra: pip install 'storyline[postgres]'")
    dbs = PgDatabases(url)
    yield dbs
    dbs.drop_all()


@pytest.fixture()
def make_store(backend: str, tmp_path: Path, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """``make_store(name="db")``: this test's store called ``name``, empty when first opened;
    the same name again opens the same database (a restart, or a second replica)."""
    from storyline.index.store import SQLiteStore

    opened: list[object] = []
    urls: dict[str, str] = {}
    dbs = request.getfixturevalue("pg_databases") if backend == "postgres" else None

    def make(name: str = "db"):  # type: ignore[no-untyped-def]
        if backend == "sqlite":
            store: object = SQLiteStore(tmp_path / f"{name}.sqlite")
        else:
            from storyline.index.pg import PostgresStore

            if name not in urls:
                urls[name] = dbs.create()
            store = PostgresStore(urls[name])
        opened.append(store)
        return store

    yield make
    for st in opened:
        st.close()  # type: ignore[attr-defined]


@pytest.fixture()
def database_url(backend: str, request: pytest.FixtureRequest) -> str | None:
    """``Settings.database_url`` for this test: None (SQLite) or a fresh PostgreSQL database."""
    if backend == "sqlite":
        return None
    return str(request.getfixturevalue("pg_databases").create())


@pytest.fixture()
def pipeline(data_dir: Path, embedder, database_url: str | None):  # type: ignore[no-untyped-def]
    from storyline.service.pipeline import Pipeline
    from storyline.service.settings import Settings

    pipe = Pipeline(Settings(data_dir=data_dir, database_url=database_url), embedder=embedder)
    yield pipe
    pipe.store.close()


@pytest.fixture(scope="session")
def seed_article():  # type: ignore[no-untyped-def]
    from storyline.service.ingest import read_txt

    path = next((ROOT / "seeds").glob("*.txt"))
    return read_txt(path).article


@pytest.fixture(autouse=True)
def _torch_not_kept_out() -> Iterator[None]:
    """Undo keep_torch_out() after each test: an app test that opens its own pipeline
    blocks torch as a server does, and the training tests later in this process need it."""
    yield
    if "torch" in sys.modules and sys.modules["torch"] is None:
        del sys.modules["torch"]


@pytest.fixture(scope="session")
def ex():  # type: ignore[no-untyped-def]
    """The real spaCy actor and statement extractor, loaded once for every test file."""
    from storyline.models.actors import SpacyActorExtractor

    return SpacyActorExtractor()
