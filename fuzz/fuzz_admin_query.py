"""atheris harness: ``targets.admin_query`` (see fuzz/targets.py and fuzz/harness.py)."""

from harness import main

if __name__ == "__main__":
    main("admin_query")
