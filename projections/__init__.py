"""Read models built from the log: each projection owns its tables and a checkpoint beside them."""

from projections.account_view import AccountView
from projections.audit_trail import AuditTrail
from projections.migration_health import MigrationHealth

PROJECTIONS = {p.name: p for p in (AccountView(), AuditTrail(), MigrationHealth())}

__all__ = ["PROJECTIONS", "AccountView", "AuditTrail", "MigrationHealth"]
