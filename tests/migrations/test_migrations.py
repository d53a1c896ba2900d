"""Alembic owns the schema: head matches the models, every step goes down and up again."""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator
from typing import Any

import alembic.command
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

from node.models import metadata as node_metadata
from priv_network import db
from priv_network.errors import SchemaOutOfDate
from registry.models import metadata as registry_metadata

METADATA = [node_metadata, registry_metadata]
# Created by the migrations but not declarable in SQLAlchemy metadata; checked for separately.
SQLITE_ONLY_TABLES = "registry_fts"  # the FTS5 virtual table and its shadow tables (registry_fts_*)
PG_ONLY_INDEXES = {"ix_registry_items_fts", "ix_registry_items_trgm"}


def model_tables() -> set[str]:
    names = [t.name for m in METADATA for t in m.sorted_tables]
    assert len(names) == len(set(names)), "the parts' tables must not share names"
    return set(names)


def merged_metadata() -> sa.MetaData:
    """Both parts' tables in one MetaData, as the one database holds them."""
    merged = sa.MetaData()
    for metadata in METADATA:
        for table in metadata.sorted_tables:
            table.to_metadata(merged)
    return merged


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = db.create_engine(database_url)
    yield engine
    await engine.dispose()


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    def run(conn: sa.Connection) -> None:
        cfg = db.alembic_config()
        cfg.attributes["connection"] = conn
        alembic.command.downgrade(cfg, revision)

    async with engine.begin() as conn:
        await conn.run_sync(run)


async def table_names(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set(await conn.run_sync(lambda c: sa.inspect(c).get_table_names()))


def include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    if type_ == "table" and name is not None and name.startswith(SQLITE_ONLY_TABLES):
        return False
    return not (type_ == "index" and name in PG_ONLY_INDEXES)


async def schema_diff(engine: AsyncEngine) -> list[Any]:
    def run(conn: sa.Connection) -> list[Any]:
        context = MigrationContext.configure(
            conn, opts={"include_object": include_object, "compare_type": True, "compare_server_default": False}
        )
        with warnings.catch_warnings():
            # PostgreSQL's expression index (to_tsvector(...)) cannot be reflected; it is excluded above anyway.
            warnings.filterwarnings("ignore", message="Skipped unsupported reflection of expression-based index")
            return list(compare_metadata(context, merged_metadata()))

    async with engine.connect() as conn:
        return await conn.run_sync(run)


async def search_objects(engine: AsyncEngine) -> set[str]:
    """The search index objects the migrations create outside the metadata."""
    async with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            rows = await conn.execute(sa.text("SELECT name FROM sqlite_master WHERE name LIKE 'registry_fts%'"))
        else:
            rows = await conn.execute(sa.text("SELECT indexname FROM pg_indexes WHERE tablename = 'registry_items'"))
        return {r[0] for r in rows}


def revisions() -> list[str]:
    """Every revision, oldest first."""
    script = ScriptDirectory.from_config(db.alembic_config())
    return [r.revision for r in reversed(list(script.walk_revisions()))]


def test_history_is_one_line() -> None:
    script = ScriptDirectory.from_config(db.alembic_config())
    assert len(script.get_heads()) == 1
    assert len(script.get_bases()) == 1
    assert revisions()[-1] == db.head_revision()
    for rev in script.walk_revisions():
        assert callable(rev.module.downgrade), rev.revision


async def test_head_matches_the_models_exactly(engine: AsyncEngine) -> None:
    await db.upgrade(engine)
    assert await schema_diff(engine) == []
    tables = await table_names(engine)
    extra = {t for t in tables if not t.startswith(SQLITE_ONLY_TABLES)} - model_tables() - {"alembic_version"}
    assert extra == set()
    assert model_tables() <= tables
    objects = await search_objects(engine)
    if engine.dialect.name == "sqlite":
        assert "registry_fts" in objects
    else:
        assert objects >= PG_ONLY_INDEXES
    assert await db.current_revision(engine) == db.head_revision()


async def test_schema_diff_sees_a_drifted_schema(engine: AsyncEngine) -> None:
    """The comparison can fail: a column the models do not have is reported."""
    await db.upgrade(engine)
    async with engine.begin() as conn:
        await conn.execute(sa.text("ALTER TABLE registry_items ADD COLUMN stray INTEGER"))
    diff = await schema_diff(engine)
    assert [d[0] for d in diff] == ["remove_column"]
    assert diff[0][3].name == "stray"


async def test_down_to_base_and_up_again(engine: AsyncEngine) -> None:
    await db.upgrade(engine)
    await downgrade(engine, "base")
    assert await table_names(engine) <= {"alembic_version"}
    assert await search_objects(engine) == set()
    assert await db.current_revision(engine) is None
    await db.upgrade(engine)
    assert await schema_diff(engine) == []
    assert await db.current_revision(engine) == db.head_revision()


async def test_every_revision_steps_down_and_up(engine: AsyncEngine) -> None:
    history = revisions()
    for revision in history:
        await db.upgrade(engine, revision)
        assert await db.current_revision(engine) == revision
    for previous in reversed(["base", *history[:-1]]):
        await downgrade(engine, previous)
        assert await db.current_revision(engine) == (None if previous == "base" else previous)
        await db.upgrade(engine, "+1")
        await downgrade(engine, previous)
    assert await table_names(engine) <= {"alembic_version"}
    await db.upgrade(engine)
    assert await schema_diff(engine) == []


async def test_check_schema_refuses_an_unmigrated_database(engine: AsyncEngine) -> None:
    with pytest.raises(SchemaOutOfDate) as excinfo:
        await db.check_schema(engine)
    message = str(excinfo.value)
    assert "none" in message and db.head_revision() in message and "priv-network db upgrade" in message
    assert "\n" not in message
    await db.upgrade(engine)
    await db.check_schema(engine)


async def test_check_schema_refuses_an_older_schema(engine: AsyncEngine) -> None:
    history = revisions()
    await db.upgrade(engine)
    await downgrade(engine, history[-2] if len(history) > 1 else "base")
    with pytest.raises(SchemaOutOfDate):
        await db.check_schema(engine)
    await db.upgrade(engine)
    await db.check_schema(engine)
