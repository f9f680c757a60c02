"""atheris harness: ``targets.response_parser`` (see fuzz/targets.py and fuzz/harness.py)."""

from harness import main

if __name__ == "__main__":
    main("response_parser")
