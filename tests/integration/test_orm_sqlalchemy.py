"""SQLAlchemy 2 through the proxy on a 2-shard cluster: declarative models of two tables sharded
by one key (tenant_id) with a relationship, create_all through the proxy, add_all + commit,
get, relationship loads, an update in a transaction, a delete, a bulk insert, rollback() after
an error with the connection reused. Ids come from the database (global ids)."""

from __future__ import annotations

import time

import psycopg
import pytest
from sqlalchemy import (
    BigInteger,
    ForeignKeyConstraint,
    String,
    create_engine,
    func,
    insert,
    select,
)
from sqlalchemy.exc import IntegrityError, NotSupportedError
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    selectinload,
)

from tests.fixtures.proxy import ProxyProcess
from tests.integration.conftest import _shards

pytestmark = pytest.mark.integration

TENANTS = list(range(1, 13))


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "orm_customers"
    tenant_id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(50))
    orders: Mapped[list[Order]] = relationship(back_populates="customer",
                                               cascade="all, delete-orphan")


class Order(Base):
    __tablename__ = "orm_orders"
    tenant_id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    customer_id: Mapped[int] = mapped_column(BigInteger)
    amount: Mapped[int]
    customer: Mapped[Customer] = relationship(back_populates="orders")
    __table_args__ = (ForeignKeyConstraint(["tenant_id", "customer_id"],
                                           ["orm_customers.tenant_id", "orm_customers.id"]),)


@pytest.fixture(scope="module")
def orm_proxy(pg_cluster):
    for s in pg_cluster.shards:
        s.primary.psql("DROP TABLE IF EXISTS orm_orders, orm_customers")
    cfg = {"proxy": {"database": "app", "pool_size": 4},
           "users": [{"name": "app", "password": "app-secret"}],
           "shards": _shards(pg_cluster),
           "tables": [{"name": "orm_customers", "shard_key": "tenant_id"},
                      {"name": "orm_orders", "shard_key": "tenant_id"}]}
    with ProxyProcess(cfg) as p:
        # The manager's first round installs the trigger that aligns new sequences and tells
        # it this config's tables (a trigger left by an earlier process on the same servers
        # may know other tables only).
        deadline = time.monotonic() + 30
        trigger = ("SELECT count(*) FROM pg_event_trigger WHERE evtname = "
                   "'pgshard_align_sequences' AND to_regclass('pgshard.id_space') IS NOT NULL")
        tables = ("SELECT count(*) FROM pgshard.id_space "
                  "WHERE array_to_string(tables, ',') LIKE '%orm_orders%'")
        for s in pg_cluster.shards:
            while not (s.primary.psql(trigger).strip().endswith("1")
                       and s.primary.psql(tables).strip().endswith("1")):
                assert time.monotonic() < deadline, p.log()
                time.sleep(0.2)
        yield p


@pytest.fixture(scope="module")
def engine(orm_proxy):
    eng = create_engine(orm_proxy.dsn().replace("postgresql://", "postgresql+psycopg://"),
                        pool_size=2, max_overflow=0, pool_pre_ping=True)
    yield eng
    eng.dispose()


def per_shard(pg_cluster, sql):
    return {s.name: s.primary.psql(sql).strip() for s in pg_cluster.shards}


def test_create_all_through_the_proxy(engine, pg_cluster):
    Base.metadata.create_all(engine)
    got = per_shard(pg_cluster, "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'orm_%'")
    assert all(v.endswith("2") for v in got.values()), got


# SQLAlchemy 2 flushes several new rows of one table as one "insertmanyvalues" statement:
#   INSERT INTO orm_customers (tenant_id, name) SELECT p0::INTEGER, p1::VARCHAR FROM (VALUES
#   (%(tenant_id__0)s::INTEGER, %(name__0)s::VARCHAR, 0), …) AS imp_sen(p0, p1, sen_counter)
#   ORDER BY sen_counter RETURNING orm_customers.id, orm_customers.id AS id__1
# The proxy routes it by the VALUES rows' keys when they are on one shard. Rows of several
# shards are refused: split, the RETURNING rows could not keep sen_counter's order, and
# SQLAlchemy matches them to objects by that order.
def test_add_all_of_one_tenant_and_commit(engine, pg_cluster):
    with Session(engine) as s:
        customers = [Customer(tenant_id=101, name=f"many{i}") for i in range(4)]
        s.add_all(customers)
        s.commit()
        ids = [c.id for c in customers]
        names = {c.id: c.name for c in customers}
    assert len(set(ids)) == len(ids)
    with Session(engine) as s:   # each object got the id of its own row
        got = {c.id: c.name for c in s.scalars(select(Customer).where(Customer.tenant_id == 101))}
    assert {i: got[i] for i in ids} == names


def test_add_all_across_tenants(engine, orm_proxy):
    with Session(engine) as s:
        s.add_all([Customer(tenant_id=t, name=f"cross{t}") for t in (101, 102, 103, 104)])
        with pytest.raises(NotSupportedError, match="use_insertmanyvalues"):
            s.commit()
        s.rollback()
    # With insertmanyvalues off, SQLAlchemy sends one INSERT per row: each to its shard.
    plain = create_engine(orm_proxy.dsn().replace("postgresql://", "postgresql+psycopg://"),
                          use_insertmanyvalues=False)
    try:
        with Session(plain) as s:
            customers = [Customer(tenant_id=t, name=f"cross{t}") for t in (101, 102, 103, 104)]
            s.add_all(customers)
            s.commit()
            assert len({c.id for c in customers}) == 4
    finally:
        plain.dispose()


@pytest.fixture(scope="module")
def seeded(engine):
    """A customer with three orders per tenant, one row per flush (a single-row INSERT …
    VALUES … RETURNING each, which the proxy routes by its tenant_id)."""
    keys = []
    with Session(engine) as s:
        for t in TENANTS:
            c = Customer(tenant_id=t, name=f"c{t}")
            s.add(c)
            s.flush()
            for i in range(3):
                c.orders.append(Order(tenant_id=t, amount=10 * t + i))
                s.flush()
            keys.append((t, c.id))
        s.commit()
    return keys


def test_ids_get_and_relationship_loads(engine, pg_cluster, seeded):
    ids = [k[1] for k in seeded]
    assert len(set(ids)) == len(ids)                       # unique across shards
    with Session(engine) as s:
        order_ids = s.scalars(select(Order.id)).all()      # a fan-out read of both shards
        assert len(order_ids) == 3 * len(TENANTS) == len(set(order_ids))
    counts = per_shard(pg_cluster, "SELECT count(*) FROM orm_customers")
    assert all(int(v.splitlines()[-1]) > 0 for v in counts.values()), counts

    with Session(engine) as s:
        for t, cid in seeded:
            c = s.get(Customer, (t, cid))
            assert c is not None and c.name == f"c{t}"
            assert sorted(o.amount for o in c.orders) == [10 * t, 10 * t + 1, 10 * t + 2]
            assert all(o.customer is c for o in c.orders)
        rows = s.scalars(select(Customer).options(selectinload(Customer.orders))
                         .where(Customer.tenant_id == TENANTS[0])).all()
        assert len(rows) == 1 and len(rows[0].orders) == 3
        everyone = s.scalars(select(Customer).options(selectinload(Customer.orders))).all()
        assert sum(len(c.orders) for c in everyone) >= 3 * len(TENANTS)


def test_update_in_a_transaction_and_delete(engine, seeded):
    with Session(engine) as s:
        with s.begin():
            c = s.scalars(select(Customer).where(Customer.tenant_id == 3)).one()
            c.name = "renamed"
            c.orders[0].amount = 999
        victim = c.orders[1]
        s.delete(victim)
        s.commit()
    with Session(engine) as s:
        c = s.scalars(select(Customer).where(Customer.tenant_id == 3)).one()
        assert c.name == "renamed"
        assert sorted(o.amount for o in c.orders) == [32, 999]


def test_bulk_insert(engine, seeded):
    with Session(engine) as s:
        c = s.scalars(select(Customer).where(Customer.tenant_id == 5)).one()
        s.execute(insert(Order), [{"tenant_id": 5, "customer_id": c.id, "amount": n}
                                  for n in range(100, 150)])
        s.commit()
        assert s.scalar(select(func.count()).select_from(Order)
                        .where(Order.tenant_id == 5)) == 53


def test_rollback_after_an_error_and_the_connection_reused(engine, seeded):
    with Session(engine) as s:
        c = s.scalars(select(Customer).where(Customer.tenant_id == 7)).one()
        cid = c.id
        s.expunge(c)
        s.add(Customer(tenant_id=7, id=cid, name="duplicate"))
        with pytest.raises(IntegrityError) as err:
            s.commit()
        assert isinstance(err.value.orig, psycopg.errors.UniqueViolation)
        s.rollback()
        # The same pooled connection serves the next transaction.
        assert s.scalars(select(Customer.name).where(Customer.tenant_id == 7)).one() == "c7"
        s.add(Order(tenant_id=7, customer_id=cid, amount=1))
        s.commit()
        assert s.scalar(select(func.count()).select_from(Order)
                        .where(Order.tenant_id == 7)) == 4
