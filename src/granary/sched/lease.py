"""The controller lease: at most one scheduler controller drives a catalog at a time.

A controller takes the lease when it starts, renews it in every tick's write transaction and releases it when
it stops. A second controller is refused with who holds the lease. A holder that died without releasing is
replaced once its lease expires, or at once when it ran on this host and its process is gone (``kill -9``).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from granary.errors import SchedError

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from granary.catalog import Catalog

NAME = "controller"

metadata = sa.MetaData()
lease_table = sa.Table(  # frozen at migration schedlease_0001
    "sched_lease",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("holder", sa.String(64), nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("acquired_at", sa.Float, nullable=False),
    sa.Column("renewed_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
)


class ControllerBusyError(SchedError):
    """Another controller holds the catalog's controller lease."""

    def __init__(self, row: Any, now: float) -> None:
        self.host, self.pid = row.host, row.pid
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row.acquired_at))
        super().__init__(
            f"another controller already runs on this catalog: pid {row.pid} on host {row.host}, since {since} "
            f"(renewed {max(0.0, now - row.renewed_at):.0f} s ago)",
            hint=f"run one controller per catalog: stop that one first; if it died on another host its lease "
                 f"expires in {max(0.0, row.expires_at - now):.0f} s",
        )


class ControllerLeaseLostError(SchedError):
    """This controller's lease was taken over (it stalled past the lease time); it must stop."""


@dataclass
class Lease:
    """This process's claim to the controller role.

    Args:
        catalog: the catalog holding ``sched_lease``.
        ttl_s: a lease not renewed for this long may be taken over.
    """

    catalog: Catalog
    ttl_s: float = 30.0

    def __post_init__(self) -> None:
        self.holder = uuid.uuid4().hex
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.held = False

    def acquire(self, now: float) -> None:
        """Take the lease or raise ControllerBusyError naming the holder."""
        t = lease_table
        values = dict(holder=self.holder, host=self.host, pid=self.pid, acquired_at=now, renewed_at=now,
                      expires_at=now + self.ttl_s)
        with self.catalog.write() as conn:
            row = conn.execute(sa.select(t).where(t.c.name == NAME)).first()
            if row is None:
                try:
                    with conn.begin_nested():
                        conn.execute(t.insert().values(name=NAME, **values))
                    self.held = True
                    return
                except sa.exc.IntegrityError:  # another controller inserted it in the meantime
                    row = conn.execute(sa.select(t).where(t.c.name == NAME)).first()
            assert row is not None
            if row.holder != self.holder and row.expires_at > now and not self._dead_here(row):
                raise ControllerBusyError(row, now)
            # conditional on what we read: of two controllers taking over a stale lease, one wins
            res = conn.execute(t.update().where(t.c.name == NAME, t.c.holder == row.holder).values(**values))
            if res.rowcount != 1:
                raise ControllerBusyError(conn.execute(sa.select(t).where(t.c.name == NAME)).one(), now)
        self.held = True

    def renew(self, conn: Connection, now: float) -> None:
        """Extend the lease inside the tick's write transaction; raise if another controller took it."""
        t = lease_table
        res = conn.execute(t.update().where(t.c.name == NAME, t.c.holder == self.holder)
                           .values(renewed_at=now, expires_at=now + self.ttl_s))
        if res.rowcount != 1:
            self.held = False
            raise ControllerLeaseLostError(
                "this controller lost its lease to another controller (a tick stalled longer than the lease)",
                hint="this controller stops; the other one carries on")

    def release(self) -> None:
        """Give the lease up (a stopping controller), so the next one starts at once."""
        if not self.held:
            return
        with self.catalog.write() as conn:
            conn.execute(lease_table.delete().where(lease_table.c.name == NAME,
                                                    lease_table.c.holder == self.holder))
        self.held = False

    def _dead_here(self, row: Any) -> bool:
        """The holder ran on this host and its process is gone (killed without releasing)."""
        if row.host != self.host or row.pid == self.pid:
            return False
        try:
            os.kill(row.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
