"""Drivers and ORMs beyond psycopg: asyncpg with pgvector's register_vector,
and SQLAlchemy 2 ORM with pgvector.sqlalchemy.Vector, used exactly as their
pgvector READMEs show (serial keys, implicit transactions, savepoints)."""

from __future__ import annotations

import asyncio

import asyncpg
import numpy as np
import pytest
from pgvector.asyncpg import register_vector
from pgvector.sqlalchemy import Vector
from sqlalchemy import Integer, String, create_engine, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column


@pytest.fixture(scope="module")
def server(module_quiver):
    return module_quiver


def test_asyncpg_register_vector(server):
    async def run():
        conn = await asyncpg.connect(
            host="127.0.0.1", port=server.port, user="postgres", database="postgres"
        )
        try:
            await register_vector(conn)
            await conn.execute("DROP TABLE IF EXISTS ap_items")
            await conn.execute(
                "CREATE TABLE ap_items (id bigserial PRIMARY KEY, embedding vector(3), name text)"
            )
            await conn.executemany(
                "INSERT INTO ap_items (embedding, name) VALUES ($1, $2)",
                [(np.array([1, 1, 1]), "a"), (np.array([2, 2, 2]), "b"), (np.array([1, 1, 2]), "c")],
            )
            rows = await conn.fetch(
                "SELECT id, embedding, name FROM ap_items ORDER BY embedding <-> $1 LIMIT 5",
                np.array([1, 1, 1]),
            )
            assert [r["name"] for r in rows] == ["a", "c", "b"]
            assert [r["id"] for r in rows] == [1, 3, 2]
            np.testing.assert_array_equal(rows[1]["embedding"].to_numpy(), [1, 1, 2])
            # A transaction block: invisible to another connection until commit.
            other = await asyncpg.connect(
                host="127.0.0.1", port=server.port, user="postgres", database="postgres"
            )
            try:
                await other.execute("SET quiver.consistency = 'strong'")
                async with conn.transaction():
                    await conn.execute(
                        "INSERT INTO ap_items (embedding, name) VALUES ($1, 'd')",
                        np.array([3, 3, 3]),
                    )
                    assert await conn.fetchval("SELECT count(*) FROM ap_items") == 4
                    assert await other.fetchval("SELECT count(*) FROM ap_items") == 3
                assert await other.fetchval("SELECT count(*) FROM ap_items") == 4
                with pytest.raises(asyncpg.UniqueViolationError):
                    async with conn.transaction():
                        await conn.execute(
                            "INSERT INTO ap_items (id, embedding, name) VALUES (100, $1, 'e')",
                            np.array([4, 4, 4]),
                        )
                        await conn.execute(
                            "INSERT INTO ap_items (id, embedding, name) VALUES (1, $1, 'f')",
                            np.array([5, 5, 5]),
                        )
                assert await other.fetchval("SELECT count(*) FROM ap_items") == 4
            finally:
                await other.close()
        finally:
            await conn.close()

    asyncio.run(run())


def test_asyncpg_cursor_fetches_in_pieces(server):
    """asyncpg cursors execute a portal a few rows at a time (Execute with a
    row limit; the server suspends the portal in between)."""

    async def run():
        conn = await asyncpg.connect(
            host="127.0.0.1", port=server.port, user="postgres", database="postgres"
        )
        try:
            await conn.execute("DROP TABLE IF EXISTS ap_cursor")
            await conn.execute("CREATE TABLE ap_cursor (id int PRIMARY KEY)")
            await conn.execute(
                "INSERT INTO ap_cursor VALUES " + ", ".join(f"({i})" for i in range(1, 1001))
            )
            async with conn.transaction():
                cursor = await conn.cursor("SELECT id FROM ap_cursor ORDER BY id")
                assert [r[0] for r in await cursor.fetch(10)] == list(range(1, 11))
                assert [r[0] for r in await cursor.fetch(5)] == list(range(11, 16))
                ids = [r[0] async for r in conn.cursor("SELECT id FROM ap_cursor ORDER BY id", prefetch=64)]
                assert ids == list(range(1, 1001))
        finally:
            await conn.close()

    asyncio.run(run())


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "sa_items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    embedding = mapped_column(Vector(3))


def test_sqlalchemy_orm_with_pgvector(server):
    engine = create_engine(
        f"postgresql+psycopg://postgres@127.0.0.1:{server.port}/postgres"
    )
    try:
        Base.metadata.drop_all(engine)
        Base.metadata.create_all(engine)
        with Session(engine) as session:
            session.add_all(
                [
                    Item(name="a", embedding=[1, 1, 1]),
                    Item(name="b", embedding=[2, 2, 2]),
                    Item(name="c", embedding=[1, 1, 2]),
                ]
            )
            session.commit()
            nearest = session.scalars(
                select(Item).order_by(Item.embedding.l2_distance([1, 1, 1])).limit(5)
            ).all()
            assert [i.name for i in nearest] == ["a", "c", "b"]
            assert [i.id for i in nearest] == [1, 3, 2]
            np.testing.assert_array_equal(nearest[1].embedding, [1, 1, 2])
            close = session.scalars(
                select(Item.name).filter(Item.embedding.cosine_distance([1, 1, 1]) < 0.01)
            ).all()
            assert sorted(close) == ["a", "b"]
            # Unit of work: update, then autoflush inside the same transaction.
            session.get(Item, 2).name = "bb"
            assert session.scalars(select(Item.name).order_by(Item.id)).all() == ["a", "bb", "c"]
            session.rollback()
            assert session.scalars(select(Item.name).order_by(Item.id)).all() == ["a", "b", "c"]
            # Nested transaction (savepoint) that fails leaves the outer one usable.
            session.add(Item(name="d", embedding=[4, 4, 4]))
            nested = session.begin_nested()
            with pytest.raises(IntegrityError):
                session.execute(
                    text("INSERT INTO sa_items (id, name, embedding) VALUES (1, 'dup', '[0,0,0]')")
                )
            nested.rollback()
            session.commit()
            assert session.scalars(select(Item.name).order_by(Item.id)).all() == ["a", "b", "c", "d"]
            session.delete(session.get(Item, 4))
            session.commit()
            assert session.scalar(select(text("count(*)")).select_from(Item)) == 3
    finally:
        engine.dispose()
