"""The demo's users, printed when the demo starts."""

DEMO_USERS = [
    # (username, password, is_superuser)
    ("alice", "wonderland", True),
    ("bob", "builder", False),
]
