import os

# Tests never leave this machine; keep Ray from phoning home or opening its dashboard.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
