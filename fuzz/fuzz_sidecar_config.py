"""atheris harness: ``targets.sidecar_config`` (see fuzz/targets.py and fuzz/harness.py)."""

from harness import main

if __name__ == "__main__":
    main("sidecar_config")
