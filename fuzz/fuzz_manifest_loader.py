"""atheris harness: ``targets.manifest_loader`` (see fuzz/targets.py and fuzz/harness.py)."""

from harness import main

if __name__ == "__main__":
    main("manifest_loader")
