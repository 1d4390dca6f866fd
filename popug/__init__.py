"""UberPopug: a task tracker with accounting and analytics, one Tornado app per subdomain."""

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
SQL_DIR = REPO_DIR / "sql"

SERVICES = ("landing", "auth", "tracker", "accounting", "analytics", "replicator", "notifier")
